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

func testIdempotentSends(t *testing.T, h *Harness) {
	name := Name("pay")
	svc := openService(name)
	var mu sync.Mutex
	runs := map[string]int{}
	ran := make(chan string, 100)
	handlers.Register(svc, "charge", func(ctx context.Context, in struct{ Order string }) (struct{}, error) {
		mu.Lock()
		runs[in.Order]++
		mu.Unlock()
		ran <- in.Order
		return struct{}{}, nil
	})
	h.Start(svc)
	h.Start(svc)
	c := h.Client(client.Config{})
	// Five sends of order A with one key, at once; then order B twice.
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Send(context.Background(), fn(name, "charge"), struct{ Order string }{"A"}, client.WithIdempotencyKey("order-A")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	<-ran
	for i := 0; i < 2; i++ {
		if err := c.Send(context.Background(), fn(name, "charge"), struct{ Order string }{"B"}, client.WithIdempotencyKey("order-B")); err != nil {
			t.Fatal(err)
		}
	}
	<-ran
	// A marker without a key, sent last, tells when the replicas are past
	// every duplicate.
	if err := c.Call(context.Background(), fn(name, "charge"), struct{ Order string }{"marker"}, nil); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 5*time.Second, "duplicates still queued", func() bool {
		b, err := h.Bus.Backlog(context.Background(), name)
		return err == nil && b.Waiting == 0 && b.Pending == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if runs["A"] != 1 || runs["B"] != 1 {
		t.Fatalf("runs %v, want A and B once each", runs)
	}
}

func testIdempotentCallReturnsFirstResult(t *testing.T, h *Harness) {
	name := Name("ids")
	svc := openService(name)
	var n atomic.Int64
	handlers.Register(svc, "next", func(context.Context, struct{}) (int64, error) { return n.Add(1), nil })
	h.Start(svc)
	c := h.Client(client.Config{})
	var first, second, other int64
	if err := c.Call(context.Background(), fn(name, "next"), struct{}{}, &first, client.WithIdempotencyKey("k1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(context.Background(), fn(name, "next"), struct{}{}, &second, client.WithIdempotencyKey("k1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(context.Background(), fn(name, "next"), struct{}{}, &other, client.WithIdempotencyKey("k2")); err != nil {
		t.Fatal(err)
	}
	if first != 1 || second != 1 || other != 2 || n.Load() != 2 {
		t.Fatalf("results %d %d %d, runs %d: want 1 1 2, 2 runs", first, second, other, n.Load())
	}
}

func testFailedIdempotentSendMayRunAgain(t *testing.T, h *Harness) {
	name := Name("retry")
	svc := openService(name, func(c *handlers.Config) { c.Retry = fastRetry(2) })
	var healthy atomic.Bool
	var runs atomic.Int64
	done := make(chan struct{}, 1)
	handlers.Register(svc, "job", func(context.Context, struct{}) (struct{}, error) {
		runs.Add(1)
		if !healthy.Load() {
			return struct{}{}, errors.New("not yet")
		}
		done <- struct{}{}
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	if err := c.Send(context.Background(), fn(name, "job"), struct{}{}, client.WithIdempotencyKey("job-1")); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, "failed send not dead-lettered", func() bool { return len(deadLetters(h, name)) == 1 })
	healthy.Store(true)
	// The key was released with the failure: sending again runs it.
	if err := c.Send(context.Background(), fn(name, "job"), struct{}{}, client.WithIdempotencyKey("job-1")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("second send with the key of a failed one did not run")
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("%d runs, want 3 (2 failed attempts, 1 success)", n)
	}
}

func testBacklogBound(t *testing.T, h *Harness) {
	const bound, conc = 40, 4
	name := Name("busy")
	svc := openService(name, func(c *handlers.Config) { c.MaxBacklog = bound; c.Concurrency = conc })
	release := make(chan struct{})
	var processed atomic.Int64
	handlers.Register(svc, "work", func(ctx context.Context, _ struct{ N int }) (struct{}, error) {
		<-release
		processed.Add(1)
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	accepted, refused := 0, 0
	for i := 0; i < 200; i++ {
		err := c.Send(context.Background(), fn(name, "work"), struct{ N int }{i})
		switch fnmesh.CodeOf(err) {
		case "":
			accepted++
		case fnmesh.CodeResourceExhausted:
			refused++
		default:
			t.Fatalf("send %d: %v", i, err)
		}
	}
	t.Logf("burst of 200 against a bound of %d: %d accepted, %d refused", bound, accepted, refused)
	if refused == 0 || accepted < bound || accepted > bound+conc+10 {
		t.Fatalf("accepted %d, refused %d: want about %d accepted (the bound plus what the replica holds)", accepted, refused, bound)
	}
	err := c.Call(context.Background(), fn(name, "work"), struct{ N int }{-1}, nil)
	if !errors.Is(err, fnmesh.ErrResourceExhausted) {
		t.Fatalf("call past the bound: %v, want resource_exhausted", err)
	}
	close(release)
	Eventually(t, 20*time.Second, fmt.Sprintf("accepted sends not all processed (%d of %d)", processed.Load(), accepted), func() bool {
		return processed.Load() == int64(accepted)
	})
	// Drained: new work is admitted again once the client re-reads the backlog.
	Eventually(t, 5*time.Second, "sends still refused after the backlog drained", func() bool {
		return c.Send(context.Background(), fn(name, "work"), struct{ N int }{-2}) == nil
	})
}

func testDeadLetterReplayAndPurge(t *testing.T, h *Harness) {
	name := Name("dlq")
	svc := openService(name, func(c *handlers.Config) { c.Retry = fastRetry(1) })
	var fixed atomic.Bool
	got := make(chan string, 10)
	handlers.Register(svc, "job", func(_ context.Context, in struct{ Job string }) (struct{}, error) {
		if !fixed.Load() {
			return struct{}{}, fnmesh.NewError("backend_down", "try later")
		}
		got <- in.Job
		return struct{}{}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	for _, j := range []string{"a", "b", "c"} {
		if err := c.Send(context.Background(), fn(name, "job"), struct{ Job string }{j}); err != nil {
			t.Fatal(err)
		}
	}
	byJob := map[string]string{} // job -> dead letter id
	Eventually(t, 10*time.Second, "sends not dead-lettered", func() bool {
		all, _ := h.Bus.DeadLetters(context.Background(), name, 10)
		for _, d := range all {
			byJob[string(d.Payload)] = d.EntryID
		}
		return len(all) == 3
	})
	fixed.Store(true)
	n, err := h.Bus.ReplayDeadLetters(context.Background(), name, byJob[`{"Job":"a"}`], byJob[`{"Job":"b"}`])
	if err != nil || n != 2 {
		t.Fatalf("replay: %d %v", n, err)
	}
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		select {
		case j := <-got:
			seen[j] = true
		case <-time.After(10 * time.Second):
			t.Fatal("replayed request not run")
		}
	}
	if !seen["a"] || !seen["b"] {
		t.Fatalf("replayed %v, want a and b", seen)
	}
	left := deadLetters(h, name)
	if len(left) != 1 || left[0].Payload != `{"Job":"c"}` {
		t.Fatalf("dead letters left %+v, want only c", left)
	}
	if _, err := h.Bus.ReplayDeadLetters(context.Background(), name, "1-1"); err == nil {
		t.Fatal("replay of an unknown id did not fail")
	}
	if n, err := h.Bus.PurgeDeadLetters(context.Background(), name); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if left := deadLetters(h, name); len(left) != 0 {
		t.Fatalf("dead letters after purge: %+v", left)
	}
}

func testStopHandsBackUnfinished(t *testing.T, h *Harness) {
	name := Name("handoff")
	newSvc := func(id string, work func(ctx context.Context) (string, error)) *handlers.Service {
		svc := openService(name, func(c *handlers.Config) { c.ReplicaID = id; c.DrainTimeout = 100 * time.Millisecond })
		handlers.Register(svc, "work", func(ctx context.Context, _ struct{}) (string, error) { return work(ctx) })
		return svc
	}
	entered := make(chan struct{})
	var once sync.Once
	stop := h.StartStoppable(newSvc(Name("first-"), func(ctx context.Context) (string, error) {
		once.Do(func() { close(entered) })
		<-ctx.Done() // never finishes by itself
		return "", ctx.Err()
	}))
	c := h.Client(client.Config{})
	result := make(chan error, 1)
	var out string
	go func() {
		result <- c.Call(context.Background(), fn(name, "work"), struct{}{}, &out, client.WithTimeout(20*time.Second))
	}()
	<-entered
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("replica stopped in %v (drain timeout 100ms)", time.Since(start))
	// Another replica starts: the handed-back call runs there, well before
	// any idle timeout.
	h.Start(newSvc(Name("second-"), func(context.Context) (string, error) { return "second", nil }))
	select {
	case err := <-result:
		if err != nil || out != "second" {
			t.Fatalf("handed-back call: %v %q, want the second replica's answer", err, out)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("handed-back call not answered")
	}
}
