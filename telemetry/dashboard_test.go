package telemetry_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fnmesh/fnmesh/telemetry"
)

// Every metric the Grafana dashboard queries is one Metrics exports.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := os.ReadFile("../deployments/grafana/fnmesh-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{})
	known := map[string]bool{}
	families, _ := m.Registry().Gather()
	for _, f := range families {
		known[f.GetName()] = true
	}
	// Families without samples yet do not show in Gather: describe them.
	ch := make(chan *prometheus.Desc, 100)
	go func() { m.Describe(ch); close(ch) }()
	nameRE := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		if s := nameRE.FindStringSubmatch(d.String()); s != nil {
			known[s[1]] = true
		}
	}
	metricRE := regexp.MustCompile(`fnmesh_[a-z_]+`)
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			for _, name := range metricRE.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
				if !known[base] {
					t.Errorf("panel %q queries %s, which telemetry does not export (known: %v)", p.Title, name, known)
				}
			}
		}
	}
	if queries < 10 {
		t.Fatalf("dashboard has %d queries", queries)
	}
}
