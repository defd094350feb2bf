package meshtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

func testCallReturnsResult(t *testing.T, h *Harness) {
	name := Name("math")
	svc := openService(name)
	handlers.Register(svc, "add", add)
	h.Start(svc)
	c := h.Client(client.Config{})
	for i := 0; i < 20; i++ {
		var out AddOut
		var info client.ReplyInfo
		if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: i, B: 2}, &out, client.WithTimeout(5*time.Second), client.WithReplyInfo(&info)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if out.Sum != i+2 {
			t.Fatalf("call %d: sum %d, want %d", i, out.Sum, i+2)
		}
		if info.Replica == "" || info.RequestID == "" {
			t.Fatalf("reply info not filled: %+v", info)
		}
	}
	got, err := client.Invoke[AddOut](context.Background(), c, fn(name, "add"), AddIn{A: 40, B: 2})
	if err != nil || got.Sum != 42 {
		t.Fatalf("Invoke: %v %+v", err, got)
	}
}

func testCallsSpreadOverReplicas(t *testing.T, h *Harness) {
	name := Name("math")
	svc := openService(name)
	var mu sync.Mutex
	served := map[string]int{}
	handlers.Register(svc, "who", func(ctx context.Context, _ struct{}) (string, error) {
		r := handlers.Info(ctx).Replica
		mu.Lock()
		served[r]++
		mu.Unlock()
		time.Sleep(2 * time.Millisecond) // keep each replica busy so others get work
		return r, nil
	})
	for i := 0; i < 3; i++ {
		h.Start(svc)
	}
	c := h.Client(client.Config{})
	const calls, conc = 300, 24
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls/conc; i++ {
				var who string
				var info client.ReplyInfo
				if err := c.Call(context.Background(), fn(name, "who"), struct{}{}, &who, client.WithReplyInfo(&info)); err != nil || who != info.Replica {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d calls failed or named the wrong replica", failed.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(served) != 3 {
		t.Fatalf("served by %d replicas, want 3: %v", len(served), served)
	}
	for r, n := range served {
		if n < calls/20 {
			t.Errorf("replica %s served %d of %d calls, want at least %d", r, n, calls, calls/20)
		}
	}
	t.Logf("calls per replica: %v", served)
}

func testReplicaRunsManyAtOnce(t *testing.T, h *Harness) {
	// Each call waits inside the function until `want` calls are inside at
	// once: with one request at a time they would all time out.
	const want = 32
	name := Name("io")
	svc := openService(name, func(c *handlers.Config) { c.Concurrency = want })
	var inside atomic.Int64
	all := make(chan struct{})
	var once sync.Once
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (int64, error) {
		if inside.Add(1) == want {
			once.Do(func() { close(all) })
		}
		select {
		case <-all:
			return want, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	var wg sync.WaitGroup
	errs := make(chan error, want)
	for i := 0; i < want; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Call(context.Background(), fn(name, "wait"), struct{}{}, nil, client.WithTimeout(10*time.Second))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("one replica did not run %d calls at once: %v", want, err)
		}
	}
}

func testDeadlineTravels(t *testing.T, h *Harness) {
	name := Name("dl")
	svc := openService(name)
	handlers.Register(svc, "left", func(ctx context.Context, _ struct{}) (int64, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return -1, nil
		}
		return time.Until(dl).Milliseconds(), nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	var left int64
	if err := c.Call(context.Background(), fn(name, "left"), struct{}{}, &left, client.WithTimeout(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if left <= 0 || left > 3000 {
		t.Fatalf("function saw %d ms left, want between 0 and 3000", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if err := c.Call(ctx, fn(name, "left"), struct{}{}, &left, client.WithTimeout(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if left <= 0 || left > 1500 {
		t.Fatalf("function saw %d ms left, want the context's 1500 ms at most", left)
	}
}

// A function that first looks at its context after its deadline passed
// finds it ended, with the deadline's error (it panicked in Done, which
// became internal).
func testContextEndedBeforeFirstLook(t *testing.T, h *Harness) {
	name := Name("late")
	svc := openService(name)
	saw := make(chan error, 1)
	handlers.Register(svc, "work", func(ctx context.Context, _ struct{}) (int, error) {
		dl, _ := ctx.Deadline()
		time.Sleep(time.Until(dl) + 10*time.Millisecond) // works past its deadline, never looking
		<-ctx.Done()
		saw <- ctx.Err()
		return 0, ctx.Err()
	})
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	WantCode(t, c.Call(context.Background(), fn(name, "work"), struct{}{}, nil, client.WithTimeout(100*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
	select {
	case err := <-saw:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the function's context ended with %v, want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the function never got past its context's Done")
	}
}

func testTimeoutWithNoReplica(t *testing.T, h *Harness) {
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}, SkipRegistryCheck: true}) // past the registry check, which says unavailable
	// A service whose replicas are all gone: the call waits for one, to
	// its deadline. (On Redis, a service no replica ever served is
	// not_found at once: TestRequestsNeverCreateStreams.)
	name := Name("gone")
	servedOnce(t, h, name)
	start := time.Now()
	err := c.Call(context.Background(), fn(name, "add"), AddIn{}, nil, client.WithTimeout(300*time.Millisecond))
	WantCode(t, err, fnmesh.CodeDeadlineExceeded)
	if !errors.Is(err, fnmesh.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("errors.Is does not match deadline errors: %v", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 5*time.Second {
		t.Fatalf("call returned after %v, want about 300ms", el)
	}
}

// servedOnce runs a replica of service name and stops it: the service's
// request stream and group exist, with no replica reading them.
func servedOnce(t *testing.T, h *Harness, name string) {
	t.Helper()
	svc := openService(name)
	handlers.Register(svc, "noop", func(context.Context, struct{}) (struct{}, error) { return struct{}{}, nil })
	if err := h.StartStoppable(svc)(); err != nil {
		t.Fatal(err)
	}
}

func testExpiredRequestIsNotRun(t *testing.T, h *Harness) {
	name := Name("late")
	servedOnce(t, h, name)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}, SkipRegistryCheck: true}) // past the registry check, which says unavailable
	// Requests queued while no replica runs, expiring before one starts.
	err := c.Call(context.Background(), fn(name, "count"), struct{}{}, nil, client.WithTimeout(100*time.Millisecond))
	WantCode(t, err, fnmesh.CodeDeadlineExceeded)
	if err := c.Send(context.Background(), fn(name, "count"), struct{}{}, client.WithTimeout(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	// A fresh request, sent after them, tells when the replica got past them.
	if err := c.Send(context.Background(), fn(name, "count"), struct{}{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // let both deadlines pass: the point of the test
	var runs atomic.Int64
	ran := make(chan struct{}, 10)
	svc := openService(name)
	handlers.Register(svc, "count", func(context.Context, struct{}) (int, error) {
		runs.Add(1)
		ran <- struct{}{}
		return 0, nil
	})
	h.Start(svc)
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("the fresh request did not run")
	}
	Eventually(t, 10*time.Second, "expired send not dead-lettered", func() bool {
		dls, _ := h.Bus.DeadLetters(context.Background(), name, 10)
		return len(dls) == 1 && dls[0].Code == fnmesh.CodeDeadlineExceeded
	})
	if n := runs.Load(); n != 1 {
		t.Fatalf("function ran %d times, want 1 (expired requests must not run)", n)
	}
}

func testCanceledContext(t *testing.T, h *Harness) {
	name := Name("slow")
	svc := openService(name)
	release := make(chan struct{})
	defer close(release)
	entered := make(chan struct{}, 1)
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (int, error) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return 0, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-entered; cancel() }() // cancelled while the call waits for its reply
	err := c.Call(ctx, fn(name, "wait"), struct{}{}, nil, client.WithTimeout(time.Minute))
	WantCode(t, err, fnmesh.CodeCanceled)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("errors.Is(err, context.Canceled) false for %v", err)
	}
}

func testSendsRunOnce(t *testing.T, h *Harness) {
	const n = 300
	name := Name("mail")
	svc := openService(name)
	var mu sync.Mutex
	seen := map[int]int{}
	all := make(chan struct{})
	handlers.Register(svc, "welcome", func(ctx context.Context, in struct{ N int }) (struct{}, error) {
		if handlers.Info(ctx).Async != true {
			t.Errorf("CallInfo.Async false for a Send")
		}
		mu.Lock()
		seen[in.N]++
		if len(seen) == n {
			close(all)
		}
		mu.Unlock()
		return struct{}{}, nil
	})
	for i := 0; i < 2; i++ {
		h.Start(svc)
	}
	c := h.Client(client.Config{})
	var wg sync.WaitGroup
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 10 {
				if err := c.Send(context.Background(), fn(name, "welcome"), struct{ N int }{i}); err != nil {
					t.Errorf("send %d: %v", i, err)
				}
			}
		}(w)
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		mu.Lock()
		t.Fatalf("only %d of %d sends ran", len(seen), n)
	}
	// Sends processed after the last one seen would be duplicates: give a
	// stray duplicate the chance to show by one more round trip.
	if err := c.Send(context.Background(), fn(name, "welcome"), struct{ N int }{-1}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, "marker send did not run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[-1] == 1
	})
	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < n; i++ {
		if seen[i] != 1 {
			t.Errorf("send %d ran %d times, want once", i, seen[i])
		}
	}
}

func fastRetry(attempts int) handlers.RetryPolicy {
	return handlers.RetryPolicy{MaxAttempts: attempts, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
}

func testSendRetries(t *testing.T, h *Harness) {
	name := Name("flaky")
	svc := openService(name, func(c *handlers.Config) { c.Retry = fastRetry(5) })
	var runs atomic.Int64
	var times []time.Time
	var mu sync.Mutex
	done := make(chan int, 1)
	handlers.Register(svc, "work", func(ctx context.Context, _ struct{}) (struct{}, error) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		if n := runs.Add(1); n < 3 {
			return struct{}{}, errors.New("transient failure")
		}
		done <- handlers.Info(ctx).Attempt
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	if err := c.Send(context.Background(), fn(name, "work"), struct{}{}); err != nil {
		t.Fatal(err)
	}
	select {
	case attempt := <-done:
		if attempt != 3 {
			t.Fatalf("succeeded on attempt %d, want 3", attempt)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("send never succeeded; %d runs", runs.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if gap := times[2].Sub(times[1]); gap < 10*time.Millisecond {
		t.Errorf("second retry came %v after the first, want a backoff of at least 10ms", gap)
	}
	dls, err := h.Bus.DeadLetters(context.Background(), name, 10)
	if err != nil || len(dls) != 0 {
		t.Fatalf("dead letters %v (%v), want none", dls, err)
	}
}

func testFailingSendIsDeadLettered(t *testing.T, h *Harness) {
	name := Name("broken")
	svc := openService(name, func(c *handlers.Config) { c.Retry = fastRetry(3) })
	var runs atomic.Int64
	handlers.Register(svc, "work", func(context.Context, struct{ Job string }) (struct{}, error) {
		runs.Add(1)
		return struct{}{}, fnmesh.NewError("smtp_down", "mail server refused")
	})
	handlers.Register(svc, "strict", func(context.Context, struct {
		Job string `validate:"required"`
	}) (struct{}, error) {
		runs.Add(100)
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	if err := c.Send(context.Background(), fn(name, "work"), struct{ Job string }{"j1"}); err != nil {
		t.Fatal(err)
	}
	// Invalid arguments fail the same way every time: no retry.
	if err := c.Send(context.Background(), fn(name, "strict"), struct{ Job string }{""}); err != nil {
		t.Fatal(err)
	}
	var dls []DeadLetterView
	Eventually(t, 10*time.Second, "failed sends not dead-lettered", func() bool {
		dls = deadLetters(h, name)
		return len(dls) == 2
	})
	byFn := map[string]DeadLetterView{}
	for _, d := range dls {
		byFn[d.Function] = d
	}
	w := byFn["work"]
	if w.Code != "smtp_down" || w.Attempts != 3 || w.Reason != "mail server refused" || w.Payload != `{"Job":"j1"}` {
		t.Fatalf("dead letter of work: %+v", w)
	}
	s := byFn["strict"]
	if s.Code != fnmesh.CodeInvalidArgument || s.Attempts != 1 {
		t.Fatalf("dead letter of strict: %+v", s)
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("runs %d, want 3 (work three times, strict never)", n)
	}
}

// DeadLetterView is a dead letter reduced to what tests compare.
type DeadLetterView struct {
	Function, Reason, Payload string
	Code                      fnmesh.Code
	Attempts                  int
}

func deadLetters(h *Harness, service string) []DeadLetterView {
	dls, err := h.Bus.DeadLetters(context.Background(), service, 100)
	if err != nil {
		h.T.Fatalf("DeadLetters: %v", err)
	}
	out := make([]DeadLetterView, 0, len(dls))
	for _, d := range dls {
		out = append(out, DeadLetterView{Function: d.Fields["fn"], Reason: d.Reason, Payload: string(d.Payload), Code: d.Code, Attempts: d.Attempts})
	}
	return out
}

func testNewReplicaDoesNotReplay(t *testing.T, h *Harness) {
	name := Name("log")
	var runs atomic.Int64
	seen := make(chan string, 100)
	newSvc := func() *handlers.Service {
		svc := openService(name)
		handlers.Register(svc, "note", func(_ context.Context, s string) (struct{}, error) {
			runs.Add(1)
			seen <- s
			return struct{}{}, nil
		})
		return svc
	}
	stop := h.StartStoppable(newSvc())
	c := h.Client(client.Config{})
	for i := 0; i < 10; i++ {
		if err := c.Call(context.Background(), fn(name, "note"), fmt.Sprint("old-", i), nil); err != nil {
			t.Fatal(err)
		}
		<-seen
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// A new replica (a new consumer in the same group) sees only what
	// was sent after: the marker, not the ten requests already served.
	h.Start(newSvc())
	if err := c.Send(context.Background(), fn(name, "note"), "marker"); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-seen:
		if s != "marker" {
			t.Fatalf("new replica ran %q first: history replayed", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("marker not run")
	}
	if n := runs.Load(); n != 11 {
		t.Fatalf("%d runs, want 11", n)
	}
}

// Callers never retry on their own: three calls that fail, even with
// unavailable, make three runs, each run before its call returns.
func testCallsAreNotRetried(t *testing.T, h *Harness) {
	name := Name("flaky")
	svc := openService(name)
	var runs atomic.Int64
	handlers.Register(svc, "get", func(context.Context, struct{}) (struct{}, error) {
		runs.Add(1)
		return struct{}{}, fnmesh.NewError(fnmesh.CodeUnavailable, "backend down")
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	for i := int64(1); i <= 3; i++ {
		WantCode(t, c.Call(context.Background(), fn(name, "get"), struct{}{}, nil), fnmesh.CodeUnavailable)
		if n := runs.Load(); n != i {
			t.Fatalf("%d failing calls made %d runs, want %d: the caller retried", i, n, i)
		}
	}
}
