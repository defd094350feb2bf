package placement_test

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/meshview"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/placement"
	"github.com/fnmesh/fnmesh/registry"
)

// Co-located services announce like any replica, and fnmesh ls and
// describe say which process serves them and how.
func TestColocatedServicesAnnounceTheirPlacement(t *testing.T) {
	b := bus.NewMemory()
	h := meshtest.NewHarness(t, b) // closes b last, after the process stopped
	announced := func(name string) *handlers.Service {
		svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet,
			Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{})}})
		handlers.Register(svc, "ping", func(context.Context, struct{}) (string, error) { return "pong", nil })
		return svc
	}
	p, err := placement.New(placement.Config{Local: []string{"alpha", "beta"}}, announced("alpha"), announced("beta"), announced("gamma"))
	if err != nil {
		t.Fatal(err)
	}
	start(t, p, b)
	// gamma runs on its own, as a remote replica would.
	gamma := announced("gamma")
	h.Start(gamma)

	store, err := registry.StoreFor(b)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	services, err := meshview.Read(ctx, store, "alpha", "gamma")
	if err != nil {
		t.Fatal(err)
	}
	if r := services[0].View.Replicas; len(r) != 1 || !slices.Equal(r[0].Colocated, []string{"alpha", "beta"}) {
		t.Fatalf("alpha's record: %+v", r)
	}
	if r := services[1].View.Replicas; len(r) != 1 || len(r[0].Colocated) != 0 {
		t.Fatalf("gamma's record: %+v", r)
	}
	var out bytes.Buffer
	if err := meshview.WriteLS(&out, services, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	ls := out.String()
	for _, want := range []string{"co-located with alpha, beta: in-process for them", "remote: reached through the bus", "process "} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls does not say %q:\n%s", want, ls)
		}
	}
	out.Reset()
	if err := meshview.WriteDescribe(&out, services[0], "ping", false, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "co-located with alpha, beta") {
		t.Errorf("describe does not show placement:\n%s", out.String())
	}
}
