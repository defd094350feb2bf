package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/telemetry"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run(flagsFirst(app, append([]string{"fnmesh"}, args...))); err != nil {
		t.Fatalf("fnmesh %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// ls, describe and top against a real redis-server with a service that
// announces itself and reports stats.
func TestInspectCommandsOnRedis(t *testing.T) {
	url, err := redistest.URL()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.NewRedis(bus.RedisConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	h := meshtest.NewHarness(t, b)
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{})
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet,
		Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{Version: "9.9", Heartbeat: 100 * time.Millisecond, TTL: 2 * time.Second, Stats: m})}}
	m.InstrumentService(&cfg)
	name := meshtest.Name("calc")
	svc := handlers.NewService(name, cfg)
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	handlers.Register(svc, "add@v2", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})

	out := run(t, "ls", "--redis", url, "--json", name)
	var list []struct {
		Name      string
		Functions []string
		Replicas  []struct{ Version string }
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || strings.Join(list[0].Functions, ",") != "add,add@v2" || list[0].Replicas[0].Version != "9.9" {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	if out := run(t, "ls", "--redis", url); !strings.Contains(out, name+"  1 replica") {
		t.Fatalf("ls:\n%s", out)
	}
	out = run(t, "describe", name+".add@v2", "--redis", url)
	if !strings.Contains(out, name+".add@v2") || !strings.Contains(out, `"x-validate": "gte=0"`) {
		t.Fatalf("describe:\n%s", out)
	}
	if out := run(t, "describe", "--diff", name, "--redis", url); !strings.Contains(out, "same request schemas") {
		t.Fatalf("describe --diff:\n%s", out)
	}

	// Calls while top samples: the frame shows a rate for add.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				c.Call(context.Background(), name+".add", meshtest.AddIn{A: 1}, nil)
			}
		}
	}()
	out = run(t, "top", "--once", "--interval", "500ms", "--redis", url)
	close(stop)
	<-done
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "add ") {
			line = l
		}
	}
	var rate float64
	if line == "" {
		t.Fatalf("top has no row for add:\n%s", out)
	}
	fmt.Sscanf(strings.Fields(line)[1], "%g", &rate)
	if rate <= 0 {
		t.Fatalf("top shows no calls for add:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if len(l) > 80 {
			t.Fatalf("top line wider than 80 columns: %q", l)
		}
	}
}
