package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
)

// A redis+sentinel:// URL works end to end: a master, a replica and three
// sentinels (redis-server --sentinel) on loopback; a service and a caller
// find the master through the sentinels; after SENTINEL FAILOVER they
// follow the new master and calls succeed again.
func TestSentinelURL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ss, err := redistest.StartSentinels(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ss.Close)
	service := meshtest.Name("sentinel")
	b := busAt(t, ss.URL, bus.RedisConfig{})
	h := &meshtest.Harness{T: t, Bus: b}
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	var out meshtest.AddOut
	if err := c.Call(ctx, service+".add", meshtest.AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
		t.Fatalf("call through sentinels: %+v %v", out, err)
	}
	// The streams are on the master the sentinels named.
	master, err := ss.MasterAddr(ctx)
	if err != nil || master != ss.Master.Addr {
		t.Fatalf("sentinels name master %q (%v), want %s", master, err, ss.Master.Addr)
	}
	if n := inspectorAt(t, ss.Master.URL).Exists(ctx, bus.RequestTopic(service), c.Inbox()).Val(); n != 2 {
		t.Fatalf("request stream and inbox on the master: %d of 2", n)
	}

	// Light load across a failover.
	const timeout = 2 * time.Second
	stop := make(chan struct{})
	done := make(chan []callRecord)
	go func() { done <- loadRecorded(c, service+".add", meshtest.AddIn{A: 1, B: 1}, 8, timeout, stop) }()
	time.Sleep(300 * time.Millisecond)
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	newMaster, err := ss.Failover(fctx)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if newMaster != ss.Replica.Addr {
		t.Fatalf("new master %s, want the replica %s", newMaster, ss.Replica.Addr)
	}
	// Calls recover: poll until one succeeds, bounded (the caller's
	// inbox may have been lost with the writes the replica had not yet
	// received; it is recreated within InboxRefresh).
	var recovered time.Duration
	meshtest.Eventually(t, 15*time.Second, "calls did not recover after the sentinel failover", func() bool {
		var out meshtest.AddOut
		err := c.Call(ctx, service+".add", meshtest.AddIn{A: 2, B: 2}, &out, client.WithTimeout(time.Second))
		recovered = time.Since(start)
		return err == nil && out.Sum == 4
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	calls := <-done
	ok, codes := 0, map[fnmesh.Code]int{}
	for _, r := range calls {
		if r.err == nil {
			ok++
			continue
		}
		codes[fnmesh.CodeOf(r.err)]++
		// not_found: the new master may lack the service's stream for a
		// moment (writes the replica had not received), and requests
		// never create it; the replica makes it again.
		if code := fnmesh.CodeOf(r.err); code != fnmesh.CodeDeadlineExceeded && code != fnmesh.CodeUnavailable && code != fnmesh.CodeNotFound {
			t.Errorf("a call failed with %v, want deadline_exceeded, unavailable or not_found", r.err)
		}
		if d := r.end.Sub(r.start); d > timeout+500*time.Millisecond {
			t.Errorf("a failed call took %v, past its %v deadline", d, timeout)
		}
	}
	t.Logf("sentinel failover %s -> %s took %v; calls succeeded again %v after it began; under load: %d calls, %d ok, failed %v",
		master, newMaster, took.Round(time.Millisecond), recovered.Round(time.Millisecond), len(calls), ok, codes)
	// The sentinels keep the former master a master for seconds after
	// the switch (until they reconfigure it): a reader still on it would
	// see no requests until then. Every connection must follow the
	// switch at once.
	if recovered > took+5*time.Second {
		t.Errorf("calls recovered %v after the sentinels had switched masters, want within 5s", recovered-took)
	}
	// Then every call succeeds, on the new master.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var out meshtest.AddOut
			if err := c.Call(ctx, service+".add", meshtest.AddIn{A: i, B: 1}, &out); err != nil || out.Sum != i+1 {
				errs <- fmt.Errorf("%d+1: %+v %v", i, out, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("after the failover: %v", err)
	}
	if n := inspectorAt(t, "redis://"+newMaster).Exists(ctx, bus.RequestTopic(service)).Val(); n != 1 {
		t.Errorf("request stream not on the new master %s", newMaster)
	}
}

// inspectorAt is a plain client of one server, closed with the test.
func inspectorAt(t testing.TB, url string) *redis.Client {
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}
