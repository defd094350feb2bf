package meshtest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

func testBreakerOpensAndRecovers(t *testing.T, h *Harness) {
	name := Name("shaky")
	svc := openService(name)
	var healthy atomic.Bool
	var runs atomic.Int64
	handlers.Register(svc, "get", func(context.Context, struct{}) (string, error) {
		runs.Add(1)
		if !healthy.Load() {
			return "", errors.New("backend down")
		}
		return "ok", nil
	})
	h.Start(svc)
	opened := make(chan struct{}, 1)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{
		ConsecutiveFailures: 3, OpenTimeout: 300 * time.Millisecond,
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				select {
				case opened <- struct{}{}:
				default:
				}
			}
		},
	}})
	target := fn(name, "get")
	for i := 0; i < 3; i++ {
		WantCode(t, c.Call(context.Background(), target, struct{}{}, nil), fnmesh.CodeInternal)
	}
	select {
	case <-opened:
	default:
		t.Fatal("breaker did not open after 3 internal errors")
	}
	before := runs.Load()
	// A call that would wait a minute for a reply fails at once: the open
	// breaker sends nothing (no run), so there is nothing to wait for. (The
	// bound only tells "at once" from "waited for a reply" on a loaded
	// machine; client's BenchmarkOpenBreaker times it.)
	start := time.Now()
	err := c.Call(context.Background(), target, struct{}{}, nil, client.WithTimeout(time.Minute))
	fe := WantCode(t, err, fnmesh.CodeUnavailable)
	if !strings.Contains(fe.Message, "circuit breaker") || !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("open breaker error %v does not say so", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("open breaker took %v to fail the call, want at once", took)
	}
	if runs.Load() != before {
		t.Fatal("a call went through an open breaker")
	}
	if c.BreakerState(target) != "open" {
		t.Fatalf("state %s, want open", c.BreakerState(target))
	}
	healthy.Store(true)
	// After OpenTimeout the breaker lets a trial call through; it succeeds
	// and the breaker closes.
	var out string
	Eventually(t, 5*time.Second, "breaker did not recover", func() bool {
		return c.Call(context.Background(), target, struct{}{}, &out) == nil && out == "ok"
	})
	if c.BreakerState(target) != "closed" {
		t.Fatalf("state %s after a successful trial, want closed", c.BreakerState(target))
	}
}

// The breaker opens after failures in a row only: a success between
// failures starts the count again, however many successes came before
// and after.
func testBreakerCountsFailuresInARow(t *testing.T, h *Harness) {
	name := Name("flaky")
	svc := openService(name)
	handlers.Register(svc, "get", func(_ context.Context, in struct{ Fail bool }) (string, error) {
		if in.Fail {
			return "", errors.New("backend down")
		}
		return "ok", nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: time.Minute}})
	target := fn(name, "get")
	call := func(fail bool) {
		t.Helper()
		err := c.Call(context.Background(), target, struct{ Fail bool }{fail}, nil)
		if fail {
			WantCode(t, err, fnmesh.CodeInternal)
		} else if err != nil {
			t.Fatal(err)
		}
	}
	for round := 0; round < 5; round++ {
		for i := 0; i < 10; i++ {
			call(false)
		}
		call(true)
		call(true)
		call(false)
		call(true)
		call(true)
		if s := c.BreakerState(target); s != "closed" {
			t.Fatalf("round %d: breaker %s after two failures in a row, want closed", round, s)
		}
	}
	call(false)
	for i := 0; i < 3; i++ {
		call(true)
	}
	if s := c.BreakerState(target); s != "open" {
		t.Fatalf("breaker %s after three failures in a row, want open", s)
	}
}

func testBreakerIgnoresCallerErrors(t *testing.T, h *Harness) {
	name := Name("strict")
	svc, signer := securedService(t, name)
	handlers.Register(svc, "add", add)
	handlers.Register(svc, "refuse", func(context.Context, struct{}) (struct{}, error) {
		return struct{}{}, fnmesh.NewError("out_of_stock", "none left")
	})
	h.Start(svc)
	tok, _ := signer.Sign("alice", time.Minute, nil)
	c := h.Client(client.Config{Token: tok, Breaker: client.BreakerConfig{ConsecutiveFailures: 2}})
	for i := 0; i < 5; i++ {
		WantCode(t, c.Call(context.Background(), fn(name, "add"), AddIn{A: -1}, nil), fnmesh.CodeInvalidArgument)
		WantCode(t, c.Call(context.Background(), fn(name, "add"), AddIn{}, nil, client.WithToken("bad")), fnmesh.CodeUnauthenticated)
		WantCode(t, c.Call(context.Background(), fn(name, "refuse"), struct{}{}, nil), "out_of_stock")
	}
	for _, f := range []string{"add", "refuse"} {
		if s := c.BreakerState(fn(name, f)); s != "closed" {
			t.Fatalf("breaker of %s is %s after caller and application errors, want closed", f, s)
		}
	}
	var out AddOut
	if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
		t.Fatalf("valid call: %v", err)
	}
}

func testGracefulStop(t *testing.T, h *Harness) {
	name := Name("slow")
	svc := openService(name)
	entered := make(chan struct{})
	release := make(chan struct{})
	handlers.Register(svc, "work", func(ctx context.Context, _ struct{}) (string, error) {
		close(entered)
		<-release
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "finished", nil
	})
	stop := h.StartStoppable(svc)
	<-svc.Started()
	c := h.Client(client.Config{})
	result := make(chan error, 1)
	var out string
	go func() { result <- c.Call(context.Background(), fn(name, "work"), struct{}{}, &out) }()
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) while a call was running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-result; err != nil || out != "finished" {
		t.Fatalf("running call did not finish during the drain: %v %q", err, out)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func testClosedClient(t *testing.T, h *Harness) {
	name := Name("stuck")
	svc := openService(name)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	handlers.Register(svc, "x", func(context.Context, struct{}) (struct{}, error) {
		entered <- struct{}{}
		<-release
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	result := make(chan error, 1)
	go func() {
		result <- c.Call(context.Background(), fn(name, "x"), struct{}{}, nil, client.WithTimeout(time.Minute))
	}()
	<-entered // the call's request runs: the call waits for its reply
	c.Close()
	if h.Local != nil && h.Local.AllInline {
		// The call runs on its caller's goroutine: Close fails it once the
		// function returns.
		select {
		case err := <-result:
			t.Fatalf("inline call returned %v while its function still ran", err)
		case <-time.After(50 * time.Millisecond):
		}
		release <- struct{}{}
	}
	select {
	case err := <-result:
		WantCode(t, err, fnmesh.CodeUnavailable)
	case <-time.After(5 * time.Second):
		t.Fatal("waiting call not failed by Close")
	}
	WantCode(t, c.Call(context.Background(), fn(name, "x"), struct{}{}, nil), fnmesh.CodeUnavailable)
}

func testBreakerIgnoresShortTimeouts(t *testing.T, h *Harness) {
	name := Name("slowish")
	svc := openService(name)
	handlers.Register(svc, "get", func(ctx context.Context, _ struct{}) (string, error) {
		select {
		case <-time.After(300 * time.Millisecond):
			return "ok", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{ConsecutiveFailures: 2, MinTimeout: 100 * time.Millisecond}})
	target := fn(name, "get")
	// Callers that allow 10ms get deadline_exceeded, and the breaker stays
	// closed for the callers that allow enough.
	for i := 0; i < 5; i++ {
		WantCode(t, c.Call(context.Background(), target, struct{}{}, nil, client.WithTimeout(10*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
	}
	if s := c.BreakerState(target); s != "closed" {
		t.Fatalf("breaker %s after callers' own short timeouts, want closed", s)
	}
	var out string
	if err := c.Call(context.Background(), target, struct{}{}, &out, client.WithTimeout(5*time.Second)); err != nil || out != "ok" {
		t.Fatalf("call with enough time: %v", err)
	}
	// Timeouts the target is to blame for (a long allowance) still count.
	for i := 0; i < 2; i++ {
		WantCode(t, c.Call(context.Background(), target, struct{}{}, nil, client.WithTimeout(150*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
	}
	if s := c.BreakerState(target); s != "open" {
		t.Fatalf("breaker %s after two timeouts of 150ms calls, want open", s)
	}
}
