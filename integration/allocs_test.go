package integration

import (
	"context"
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// redisCallPath starts one replica of a trivial function and a client,
// each on its own Redis connection, and returns one call.
func redisCallPath(tb testing.TB) func() error {
	return callPathOn(tb, func() *bus.Redis { return newRedisBus(tb, bus.RedisConfig{}) })
}

// callPathOn is redisCallPath on buses made by newBus.
func callPathOn(tb testing.TB, newBus func() *bus.Redis) func() error {
	service := meshtest.Name("allocs")
	h := meshtest.NewHarness(tb, newBus())
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	cb := newBus()
	tb.Cleanup(func() { cb.Close() })
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	fn := service + ".add"
	in := meshtest.AddIn{A: 1, B: 2}
	return func() error {
		var out meshtest.AddOut
		return c.Call(context.Background(), fn, in, &out)
	}
}

// BenchmarkCallRedis is one call through client, Redis and replica:
// -benchmem reports the allocations per call on both sides together.
func BenchmarkCallRedis(b *testing.B) {
	benchCalls(b, redisCallPath(b))
}

// benchCalls warms call up, then runs it from parallel goroutines for the
// benchmark, reporting allocations.
func benchCalls(b *testing.B, call func() error) {
	for i := 0; i < 100; i++ {
		call()
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// Allocations per call, client and replica together, on Redis. The budget
// (allocs_budget_test.go, allocs_budget_race_test.go under -race) is about
// 10% over what was measured: a change that allocates more per call fails
// here and must say why.
func TestAllocationBudgetRedis(t *testing.T) {
	allocs := allocsPerCall(t, redisCallPath(t))
	t.Logf("allocations per call over Redis (client + replica): %.1f", allocs)
	if allocs > redisAllocBudget {
		t.Fatalf("%.1f allocations per call, budget %d (%s)", allocs, redisAllocBudget, redisAllocMeasured)
	}
}

// Allocations per call on a Redis Cluster, client and replica together:
// the combiner writes each command as the RESP it was encoded in, on
// connections of its own to the masters, as on one server, not as a
// go-redis command made again from its arguments.
func TestAllocationBudgetCluster(t *testing.T) {
	url := sharedCluster(t).URL
	allocs := allocsPerCall(t, callPathOn(t, func() *bus.Redis { return busAt(t, url, bus.RedisConfig{}) }))
	t.Logf("allocations per call on a Cluster (client + replica): %.1f", allocs)
	if allocs > clusterAllocBudget {
		t.Fatalf("%.1f allocations per call, budget %d (%s)", allocs, clusterAllocBudget, clusterAllocMeasured)
	}
}

// allocsPerCall is meshtest.AllocsPerCall of call, failing t if a call
// fails.
func allocsPerCall(t *testing.T, call func() error) float64 {
	return meshtest.AllocsPerCall(func() {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	})
}
