package registry_test

import (
	"context"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/registry"
)

type addIn struct{ A, B int }
type addOut struct{ Sum int }

func startMath(b *testing.B, bs bus.Bus) func() {
	svc := handlers.NewService("bench", handlers.Config{AllowUnauthenticated: true, Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{})}})
	handlers.Register(svc, "add", func(_ context.Context, in addIn) (addOut, error) { return addOut{Sum: in.A + in.B}, nil })
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx, bs); close(done) }()
	<-svc.Started()
	return func() { stop(); <-done }
}

// BenchmarkDiscoveryCheck is what the discovery interceptor adds to a
// call whose function is in the cached view: no I/O, no allocation.
func BenchmarkDiscoveryCheck(b *testing.B) {
	bs := bus.NewMemory()
	defer bs.Close()
	defer startMath(b, bs)()
	w, err := registry.NewWatcher(bs, registry.WatcherConfig{Refresh: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	if err := w.Check(ctx, "bench", "add", false); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := w.Check(ctx, "bench", "add", false); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCallMemory{Plain,WithDiscovery} compare a whole call on the
// in-memory bus without and with the discovery interceptor.
func BenchmarkCallMemoryPlain(b *testing.B) { benchmarkCall(b, false) }

func BenchmarkCallMemoryWithDiscovery(b *testing.B) { benchmarkCall(b, true) }

func benchmarkCall(b *testing.B, discovery bool) {
	bs := bus.NewMemory()
	defer bs.Close()
	defer startMath(b, bs)()
	cfg := client.Config{SkipRegistryCheck: !discovery}
	c, err := client.New(bs, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var out addOut
	if err := c.Call(ctx, "bench.add", addIn{1, 2}, &out); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var out addOut
		for pb.Next() {
			if err := c.Call(ctx, "bench.add", addIn{1, 2}, &out); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
