package integration

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/telemetry"
)

// Not parallel (it counts goroutines and connections): calls through the
// discovery check, metrics and tracing, to a replica that announces and
// heartbeats, grow no key, goroutine or connection.
func TestInstrumentedCallsLeaveNothingBehind(t *testing.T) {
	rdb := inspector(t)
	ctx := context.Background()
	service := meshtest.Name("obs")
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: meshtest.Quiet})
	tr := telemetry.NewTracing(nil)
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet,
		Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{Heartbeat: 50 * time.Millisecond, TTL: 2 * time.Second, Stats: m})}}
	m.InstrumentService(&cfg)
	tr.InstrumentService(&cfg)
	svc := handlers.NewService(service, cfg)
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	name := meshtest.Name("obstest") // names this test's connections
	named := func(cfg bus.RedisConfig) *bus.Redis {
		cfg.URL = redisURL + "?client_name=" + name
		b, err := bus.NewRedis(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	h := meshtest.NewHarness(t, named(bus.RedisConfig{TrimInterval: 100 * time.Millisecond, InboxRefresh: 100 * time.Millisecond}))
	h.Start(svc)
	cb := named(busConfig())
	t.Cleanup(func() { cb.Close() })
	w, err := registry.NewWatcher(cb, registry.WatcherConfig{Refresh: 50 * time.Millisecond, Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ccfg := client.Config{Name: "leaktest", Logger: meshtest.Quiet, Registry: w}
	m.InstrumentClient(&ccfg)
	tr.InstrumentClient(&ccfg)
	c, err := client.New(cb, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	calls := func(n int) {
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := g; i < n; i += 16 {
					if err := c.Call(ctx, service+".add", meshtest.AddIn{A: i, B: 1}, nil); err != nil {
						t.Errorf("call: %v", err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
	}
	// Warm up until pools are at their working size and the replica has
	// written its stats; then two equal batches: whatever grows with calls
	// grows between them.
	calls(500)
	meshtest.Eventually(t, 2*time.Second, "no stats written", func() bool {
		return rdb.Exists(ctx, registry.StatsKey(service)).Val() == 1
	})
	calls(5000)
	keys0, goroutines0, conns0 := rdb.DBSize(ctx).Val(), runtime.NumGoroutine(), clientCount(t, rdb, name)
	calls(5000)
	keys, goroutines, conns := rdb.DBSize(ctx).Val(), runtime.NumGoroutine(), clientCount(t, rdb, name)
	t.Logf("after 5,000 more instrumented calls: keys %d -> %d, goroutines %d -> %d, connections %d -> %d", keys0, keys, goroutines0, goroutines, conns0, conns)
	if keys != keys0 {
		t.Errorf("Redis keys grew from %d to %d", keys0, keys)
	}
	if goroutines > goroutines0+5 {
		t.Errorf("goroutines grew from %d to %d", goroutines0, goroutines)
	}
	if conns > conns0+2 {
		t.Errorf("connections grew from %d to %d", conns0, conns)
	}
	if w.Watching() != 1 {
		t.Errorf("watcher holds %d services, want 1", w.Watching())
	}
}
