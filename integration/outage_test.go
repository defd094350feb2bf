package integration

import (
	"context"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
)

// outageFailBound is how soon Call and Send must fail while Redis is out:
// the promise is about a second; the rest is room for a loaded machine,
// still far below the calls' 10 s deadline.
const outageFailBound = 2 * time.Second

// Redis hung (SIGSTOP) and Redis down (SIGKILL): Call and Send fail with
// unavailable within about a second although their deadline is 10 s, so
// callers can back off; when Redis returns, calls work again and the
// replica process is still running.
func TestRedisOutageFailsCallsFast(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start(redistest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	service := meshtest.Name("outage")
	w := startWorker(t, workerSpec{Service: service, Replica: "r1", Redis: srv.URL, ClaimIdle: faultClaimIdle})
	cb, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet, Breaker: client.BreakerConfig{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	works := func(when string) {
		t.Helper()
		var by string
		meshtest.Eventually(t, 30*time.Second, "calls do not work "+when, func() bool {
			return c.Call(ctx, service+".who", struct{}{}, &by, client.WithTimeout(2*time.Second)) == nil
		})
	}
	failsFast := func(outage string) {
		t.Helper()
		for _, op := range []struct {
			name string
			do   func() error
		}{
			{"Call", func() error {
				return c.Call(ctx, service+".who", struct{}{}, nil, client.WithTimeout(10*time.Second))
			}},
			{"Send", func() error {
				return c.Send(ctx, service+".record", SleepIn{Key: "outage"}, client.WithTimeout(10*time.Second))
			}},
		} {
			start := time.Now()
			err := op.do()
			took := time.Since(start)
			t.Logf("Redis %s: %s failed after %v: %v", outage, op.name, took.Round(time.Millisecond), err)
			if fnmesh.CodeOf(err) != fnmesh.CodeUnavailable || took > outageFailBound {
				t.Errorf("Redis %s: %s returned %v after %v, want unavailable within %v", outage, op.name, err, took, outageFailBound)
			}
		}
	}
	works("before the outage")

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	failsFast("paused")
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	works("after Redis resumed")

	srv.Kill()
	failsFast("killed")
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	works("after Redis restarted")
	if w.exited() {
		t.Fatalf("replica exited during the outages: %v", w.wait(0))
	}
}
