package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/registry/registrytest"
)

// A replica process killed with SIGKILL (no goodbye) drops out of the
// registry within its TTL, its record is pruned by the next heartbeat of
// a live replica, and once none is left calls fail with unavailable at
// once.
func TestKilledReplicaLeavesTheRegistry(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("kill")
	r1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Registry: true})
	r2 := startWorker(t, workerSpec{Service: service, Replica: "r2", Registry: true})
	store := registry.NewRedisStore(inspector(t))
	ctx := context.Background()
	live := func() int {
		v, err := store.Service(ctx, service)
		if err != nil {
			t.Fatal(err)
		}
		return len(v.Replicas)
	}
	if n := live(); n != 2 {
		t.Fatalf("%d live replicas, want 2", n)
	}
	r1.kill()
	killed := time.Now()
	meshtest.Eventually(t, 5*time.Second, "killed replica still listed", func() bool { return live() == 1 })
	if took := time.Since(killed); took > 2500*time.Millisecond {
		t.Fatalf("killed replica listed for %v, want about its TTL of 1s", took)
	}
	meshtest.Eventually(t, 3*time.Second, "killed replica's record not pruned", func() bool {
		n, err := registrytest.RecordCount(ctx, store, service)
		return err == nil && n == 1
	})

	c := newClient(t, client.Config{SkipRegistryCheck: true})
	w, err := registry.NewWatcher(newRedisBus(t, busConfig()), registry.WatcherConfig{Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	checked := newClient(t, client.Config{Registry: w})
	var who string
	if err := checked.Call(ctx, service+".who", struct{}{}, &who); err != nil || who != "r2" {
		t.Fatalf("call: %v %q", err, who)
	}
	r2.kill()
	meshtest.Eventually(t, 5*time.Second, "no live replica, but calls are not failed at once", func() bool {
		err := checked.Call(ctx, service+".who", struct{}{}, nil, client.WithTimeout(300*time.Millisecond))
		return fnmesh.CodeOf(err) == fnmesh.CodeUnavailable
	})
	start := time.Now()
	err = checked.Call(ctx, service+".who", struct{}{}, nil, client.WithTimeout(10*time.Second))
	if fnmesh.CodeOf(err) != fnmesh.CodeUnavailable || time.Since(start) > 2*time.Second {
		t.Fatalf("call with every replica dead: %v after %v, want unavailable at once", err, time.Since(start))
	}
	// Without the check the same call waits for its deadline.
	start = time.Now()
	err = c.Call(ctx, service+".who", struct{}{}, nil, client.WithTimeout(300*time.Millisecond))
	if fnmesh.CodeOf(err) != fnmesh.CodeDeadlineExceeded || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("unchecked call: %v after %v", err, time.Since(start))
	}
}

// Replica processes that restart (each with a new id) and crash leave
// no registry records or keys behind.
func TestRegistryDoesNotGrowWithRestarts(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("churn")
	rdb := inspector(t)
	ctx := context.Background()
	startWorker(t, workerSpec{Service: service, Replica: "stays", Registry: true})
	keys := func() []string {
		ks, err := rdb.Keys(ctx, "fnmesh:{"+service+"}:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	for i := 0; i < 5; i++ {
		w := startWorker(t, workerSpec{Service: service, Replica: fmt.Sprintf("crash-%d", i), Registry: true})
		w.kill()
	}
	store := registry.NewRedisStore(rdb)
	meshtest.Eventually(t, 3*time.Second, "records of crashed replicas not pruned", func() bool {
		n, err := registrytest.RecordCount(ctx, store, service)
		return err == nil && n == 1
	})
	// The service's keys are a fixed set, whatever the restarts.
	fixed := map[string]bool{bus.RequestTopic(service): true, bus.DeadLetterTopic(service): true,
		registry.ReplicasKey(service): true, registry.BeatsKey(service): true, registry.StatsKey(service): true, registry.KnownKey(service): true}
	for _, k := range keys() {
		if !fixed[k] {
			t.Errorf("key %s after restarts", k)
		}
	}
	for _, k := range []string{registry.ReplicasKey(service), registry.BeatsKey(service), registry.StatsKey(service), registry.KnownKey(service)} {
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 || ttl > 25*time.Hour {
			t.Errorf("%s has TTL %v, want one of about a day", k, ttl)
		}
	}
	if n := rdb.HLen(ctx, registry.StatsKey(service)).Val(); n > 1 {
		t.Errorf("%d stats entries, want at most the live replica's", n)
	}
}
