// Package demo is `fnmesh demo`: example services and a caller that shows
// load balancing over replicas, a send, error codes, access checks, a
// breaker opening and a deadline.
package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/security"
)

// Shows lists lines (or parts of lines) the demo prints when every part
// of it works; tests check its output against them.
var Shows = []string{
	"3 replicas answered",
	"mail-1 sent a welcome mail to ada@example.com",
	"invalid_argument: arguments of math.div failed validation: b (ne=0)",
	"negative_input: square root of a negative number",
	"not_found: function math.pow not found",
	`permission_denied: role "admin" required`,
	"unauthenticated: missing token",
	"unauthenticated: token signature is invalid",
	"asked_by:root",
	"breaker for legacy.lookup: closed -> open",
	"unavailable: circuit breaker for legacy.lookup",
	"deadline_exceeded: no result from billing.charge",
}

// demoBuses hands out buses: one shared in-memory bus, or a Redis
// connection per component, as separate processes would have.
type demoBuses struct {
	url string
	mem *bus.Memory
	all []bus.Bus
}

func (d *demoBuses) get() (bus.Bus, error) {
	if d.url == "" {
		if d.mem == nil {
			d.mem = bus.NewMemory()
			d.all = append(d.all, d.mem)
		}
		return d.mem, nil
	}
	b, err := bus.NewRedis(bus.RedisConfig{URL: d.url})
	if err == nil {
		d.all = append(d.all, b)
	}
	return b, err
}

func (d *demoBuses) close() {
	for _, b := range d.all {
		b.Close()
	}
}

// Run runs the demo, writing what happens to w: on the in-memory bus, or
// on Redis at redisURL when it is not empty.
func Run(ctx context.Context, w io.Writer, redisURL string) error {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	buses := &demoBuses{url: redisURL}
	defer buses.close()
	where := "the in-memory bus (one process)"
	if redisURL != "" {
		where = "Redis at " + redisURL + " (a connection per replica, as separate processes would have)"
	}
	say("fnmesh demo on %s\n", where)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	secured := func(id string) handlers.Config {
		return handlers.Config{Auth: examples.Verifier(), ReplicaID: id, Logger: quiet}
	}
	runCtx, stopServices := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopServices(); wg.Wait() }()
	var runErr error
	var errOnce sync.Once
	start := func(svc *handlers.Service) error {
		b, err := buses.get()
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc.Run(runCtx, b); err != nil {
				errOnce.Do(func() { runErr = err })
			}
		}()
		select {
		case <-svc.Started():
			return nil
		case <-time.After(10 * time.Second):
			return fmt.Errorf("service %s did not start: %v", svc.Name(), runErr)
		}
	}
	mailed := make(chan string, 10)
	services := []*handlers.Service{
		examples.Math(secured("math-1")), examples.Math(secured("math-2")), examples.Math(secured("math-3")),
		examples.MailService(secured("mail-1"), func(replica string, m examples.Mail) {
			mailed <- fmt.Sprintf("%s sent a welcome mail to %s", replica, m.To)
		}),
		examples.Legacy(handlers.Config{AllowUnauthenticated: true, ReplicaID: "legacy-1", Logger: quiet}),
	}
	for _, svc := range services {
		if err := start(svc); err != nil {
			return err
		}
	}
	say("started math (3 replicas, token check), mail (1 replica, async), legacy (its backend is down)\n")

	signer := security.NewHS256Signer(examples.Secret())
	alice, _ := signer.Sign("alice", time.Hour, security.Claims{"roles": []string{"user"}})
	root, _ := signer.Sign("root", time.Hour, security.Claims{"roles": []string{"admin"}})
	cb, err := buses.get()
	if err != nil {
		return err
	}
	cl, err := client.New(cb, client.Config{Name: "demo", Token: alice, Logger: quiet, Breaker: client.BreakerConfig{
		ConsecutiveFailures: 3, OpenTimeout: 2 * time.Second,
		OnStateChange: func(fn string, from, to gobreaker.State) {
			say("   breaker for %s: %s -> %s", fn, from, to)
		},
	}})
	if err != nil {
		return err
	}
	defer cl.Close()

	say("1. Calls spread over the replicas of math (token of alice):")
	seen := map[string]int{}
	for i := 1; i <= 9; i++ {
		var out examples.Result
		if err := cl.Call(ctx, "math.add", examples.AddIn{A: float64(i), B: 2}, &out, client.WithTimeout(5*time.Second)); err != nil {
			return fmt.Errorf("math.add: %w", err)
		}
		seen[out.Replica]++
		say("   math.add(%d, 2) = %g   answered by %s", i, out.Value, out.Replica)
	}
	say("   %d replicas answered\n", len(seen))

	say("2. Fire-and-forget: Send returns once the request is queued.")
	if err := cl.Send(ctx, "mail.welcome", examples.Mail{To: "ada@example.com", Name: "Ada"}); err != nil {
		return fmt.Errorf("mail.welcome: %w", err)
	}
	say("   mail.welcome queued")
	select {
	case m := <-mailed:
		say("   %s\n", m)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("mail.welcome did not run in 10s")
	}

	say("3. Errors have codes callers can test (errors.Is / errors.As):")
	show := func(label, fn string, in any, opts ...client.CallOption) {
		var out any
		err := cl.Call(ctx, fn, in, &out, opts...)
		if err != nil {
			say("   %-34s -> %s", label, examples.Describe(err))
		} else {
			say("   %-34s -> %v", label, out)
		}
	}
	show("math.div(1, 0)", "math.div", map[string]any{"a": 1, "b": 0})
	show("math.sqrt(-4)", "math.sqrt", map[string]any{"x": -4})
	show("math.pow(2, 8)", "math.pow", map[string]any{"a": 2, "b": 8})
	say("")

	say("4. Access: math.stats needs the admin role.")
	show("math.stats as alice (user)", "math.stats", struct{}{})
	show("math.stats without a token", "math.stats", struct{}{}, client.WithToken(""))
	show("math.stats with a forged token", "math.stats", struct{}{}, client.WithToken(alice[:len(alice)-4]+"AAAA"))
	show("math.stats as root (admin)", "math.stats", struct{}{}, client.WithToken(root))
	say("")

	say("5. A breaker per function: legacy.lookup fails, its breaker opens after 3 failures.")
	for i := 1; i <= 5; i++ {
		t0 := time.Now()
		err := cl.Call(ctx, "legacy.lookup", map[string]string{"id": "42"}, nil, client.WithTimeout(2*time.Second))
		say("   call %d -> %s (%v)", i, examples.Describe(err), time.Since(t0).Round(time.Microsecond))
	}
	say("")

	say("6. A deadline: billing.charge has no replica running (its last one stopped).")
	// A service no replica ever served is not_found at once on Redis;
	// one whose replicas stopped keeps its queue, and a call waits.
	billing := handlers.NewService("billing", handlers.Config{AllowUnauthenticated: true, Logger: quiet})
	handlers.Register(billing, "charge", func(context.Context, map[string]int) (struct{}, error) { return struct{}{}, nil })
	if b, err := buses.get(); err == nil {
		bctx, stopBilling := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- billing.Run(bctx, b) }()
		select {
		case <-billing.Started():
		case <-time.After(10 * time.Second):
		}
		stopBilling()
		<-done
	}
	t0 := time.Now()
	err = cl.Call(ctx, "billing.charge", map[string]int{"cents": 100}, nil, client.WithTimeout(300*time.Millisecond))
	say("   billing.charge -> %s after %v\n", examples.Describe(err), time.Since(t0).Round(time.Millisecond))

	if runErr != nil {
		return runErr
	}
	say("Done. %s", strings.TrimSpace(`
Next: start replicas in terminals of their own and call them:
  go run ./cmd/examples/math --redis redis://127.0.0.1:6379
  go run ./cmd/fnmesh call math.add '{"a":1,"b":2}' --token "$(go run ./cmd/fnmesh token --sub me)"`))
	return nil
}
