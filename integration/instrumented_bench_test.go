package integration

import (
	"context"
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/telemetry"
)

// BenchmarkCallRedisInstrumented is BenchmarkCallRedis with everything
// of issue 4 on: the discovery check, metrics on both sides, tracing
// (no provider set: propagation only), a replica that announces and
// heartbeats with stats. Compare the two in one run.
func BenchmarkCallRedisInstrumented(b *testing.B) {
	service := meshtest.Name("instr")
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: meshtest.Quiet})
	tr := telemetry.NewTracing(nil)
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet,
		Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{Stats: m})}}
	m.InstrumentService(&cfg)
	tr.InstrumentService(&cfg)
	svc := handlers.NewService(service, cfg)
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h := meshtest.NewHarness(b, newRedisBus(b, bus.RedisConfig{}))
	h.Start(svc)
	cb := newRedisBus(b, bus.RedisConfig{})
	b.Cleanup(func() { cb.Close() })
	w, err := registry.NewWatcher(cb, registry.WatcherConfig{Logger: meshtest.Quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Close() })
	ccfg := client.Config{Name: "bench", Logger: meshtest.Quiet, Registry: w}
	m.InstrumentClient(&ccfg)
	tr.InstrumentClient(&ccfg)
	c, err := client.New(cb, ccfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	fn, in := service+".add", meshtest.AddIn{A: 1, B: 2}
	benchCalls(b, func() error {
		var out meshtest.AddOut
		return c.Call(context.Background(), fn, in, &out)
	})
}
