package placement_test

import (
	"context"
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/placement"
)

// inlineService registers its functions with handlers.Inline: co-located
// calls run on their caller's goroutine.
func inlineService(stacks chan<- string) *handlers.Service {
	svc := handlers.NewService("fast", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(ctx context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		if stacks != nil {
			buf := make([]byte, 64<<10)
			stacks <- string(buf[:runtime.Stack(buf, false)])
		}
		if handlers.Info(ctx).Function != "add" {
			return meshtest.AddOut{}, fnmesh.NewError(fnmesh.CodeInternal, "no call info")
		}
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	}, handlers.Inline())
	handlers.Register(svc, "boom", func(context.Context, struct{}) (int, error) { panic("boom") }, handlers.Inline())
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (int, error) {
		<-ctx.Done() // honours its context
		return 0, ctx.Err()
	}, handlers.Inline())
	handlers.Register(svc, "stuck", func(context.Context, struct{}) (int, error) {
		time.Sleep(300 * time.Millisecond) // ignores its context: what Inline must not be given
		return 1, nil
	}, handlers.Inline())
	return svc
}

func inlineClient(t *testing.T, stacks chan<- string) (*client.Client, *countingBus) {
	t.Helper()
	b := &countingBus{Bus: bus.NewMemory()}
	t.Cleanup(func() { b.Close() })
	return localClient(t, b, inlineService(stacks)), b
}

// A function registered Inline runs on its co-located caller's own
// goroutine, with the mesh's steps around it (Info, the result).
func TestInlineRunsOnTheCallersGoroutine(t *testing.T) {
	stacks := make(chan string, 1)
	c, b := inlineClient(t, stacks)
	var out meshtest.AddOut
	if err := c.Call(context.Background(), "fast.add", meshtest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("call: %v %+v", err, out)
	}
	if stack := <-stacks; !strings.Contains(stack, "TestInlineRunsOnTheCallersGoroutine") {
		t.Fatalf("the function did not run on its caller's goroutine:\n%s", stack)
	}
	meshtest.WantCode(t, c.Call(context.Background(), "fast.add", meshtest.AddIn{A: -1}, nil), fnmesh.CodeInvalidArgument)
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("%d requests went over the bus, want 0", n)
	}
}

// Run inline, a panic is internal and the process serves on; a function
// that honours its context ends its call at the deadline; one that
// ignores it holds its caller until it returns, and the caller still
// gets deadline_exceeded, not the late result.
func TestInlinePanicAndDeadline(t *testing.T) {
	c, b := inlineClient(t, nil)
	fe := meshtest.WantCode(t, c.Call(context.Background(), "fast.boom", struct{}{}, nil), fnmesh.CodeInternal)
	if !strings.Contains(fe.Message, "panicked") {
		t.Fatalf("message %q", fe.Message)
	}

	began := time.Now()
	meshtest.WantCode(t, c.Call(context.Background(), "fast.wait", struct{}{}, nil, client.WithTimeout(50*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
	if el := time.Since(began); el < 50*time.Millisecond || el > 2*time.Second {
		t.Fatalf("a call whose function honours its 50ms deadline took %v", el)
	}

	began = time.Now()
	var late int
	err := c.Call(context.Background(), "fast.stuck", struct{}{}, &late, client.WithTimeout(50*time.Millisecond))
	meshtest.WantCode(t, err, fnmesh.CodeDeadlineExceeded)
	if el := time.Since(began); el < 300*time.Millisecond {
		t.Fatalf("an inline call returned after %v, before its function (300ms)", el)
	}
	if late != 0 {
		t.Fatalf("the late result %d reached the caller", late)
	}
	servesInProcess(t, c, b, "fast.add")
}

type callerKey struct{}

// An inline call's function sees its caller's cancellation (so that the
// caller, waiting for it, returns), but none of the caller's values.
func TestInlineCallerCancellation(t *testing.T) {
	b := bus.NewMemory()
	t.Cleanup(func() { b.Close() })
	svc := handlers.NewService("fast", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	entered := make(chan struct{}, 1)
	ended := make(chan error, 1)
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (int, error) {
		if ctx.Value(callerKey{}) != nil {
			return 0, fnmesh.NewError(fnmesh.CodeInternal, "the caller's value reached the function")
		}
		entered <- struct{}{}
		<-ctx.Done()
		ended <- ctx.Err()
		return 1, nil
	}, handlers.Inline())
	c := localClient(t, b, svc)
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), callerKey{}, "secret"))
	go func() { <-entered; cancel() }()
	began := time.Now()
	err := c.Call(ctx, "fast.wait", struct{}{}, nil, client.WithTimeout(5*time.Second))
	meshtest.WantCode(t, err, fnmesh.CodeCanceled)
	if el := time.Since(began); el > 4*time.Second {
		t.Fatalf("a cancelled inline call returned after %v", el)
	}
	select {
	case got := <-ended:
		if got != context.Canceled {
			t.Fatalf("the function's context ended with %v, want context.Canceled", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the function never got past its context's Done")
	}
}

// The Invocations of calls answered in-process are recycled, but not
// those an interceptor of the caller's saw: it may keep them.
func TestInterceptorKeepsItsInvocations(t *testing.T) {
	b := bus.NewMemory()
	t.Cleanup(func() { b.Close() }) // after the replicas stop
	worker := handlers.NewService("slow", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(worker, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	var kept []*client.Invocation
	var want []string
	keep := func(next client.Invoker) client.Invoker {
		return func(ctx context.Context, inv *client.Invocation) (json.RawMessage, error) {
			kept = append(kept, inv)
			want = append(want, inv.ID+" "+inv.Function)
			return next(ctx, inv)
		}
	}
	c := placedClient(t, b, placement.Config{}, client.Config{Interceptors: []client.Interceptor{keep}}, inlineService(nil), worker)
	for i := 0; i < 100; i++ {
		function := []string{"fast.add", "slow.add"}[i%2]
		var out meshtest.AddOut
		if err := c.Call(context.Background(), function, meshtest.AddIn{A: i, B: 1}, &out); err != nil || out.Sum != i+1 {
			t.Fatalf("%s: %v %+v", function, err, out)
		}
	}
	for i, inv := range kept {
		if got := inv.ID + " " + inv.Function; got != want[i] {
			t.Fatalf("invocation %d the interceptor kept is now %q, was %q: it was reused", i, got, want[i])
		}
	}
}

// Config.Inline runs every co-located call of a service on its caller's
// goroutine, whatever its functions were registered with; the other
// services keep their workers.
func TestInlineByConfiguration(t *testing.T) {
	stacks := make(chan string, 1)
	stackOf := func(name string) *handlers.Service {
		svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
		handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
			buf := make([]byte, 64<<10)
			stacks <- string(buf[:runtime.Stack(buf, false)])
			return meshtest.AddOut{Sum: in.A + in.B}, nil
		})
		return svc
	}
	b := &countingBus{Bus: bus.NewMemory()}
	t.Cleanup(func() { b.Close() })
	c := placedClient(t, b, placement.Config{Inline: []string{"pricing"}}, client.Config{}, stackOf("pricing"), stackOf("stock"))
	for _, tc := range []struct {
		function string
		inline   bool
	}{{"pricing.add", true}, {"stock.add", false}} {
		var out meshtest.AddOut
		if err := c.Call(context.Background(), tc.function, meshtest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
			t.Fatalf("%s: %v %+v", tc.function, err, out)
		}
		if onCaller := strings.Contains(<-stacks, "client.(*Client).Call("); onCaller != tc.inline {
			t.Errorf("%s ran on its caller's goroutine: %v, want %v", tc.function, onCaller, tc.inline)
		}
	}
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("%d requests went over the bus, want 0", n)
	}
}

// A process asked to run inline a service it does not host refuses to
// start, naming it.
func TestInlineServiceNotHostedRefused(t *testing.T) {
	_, err := placement.New(placement.Config{Local: []string{"fast"}, Inline: []string{"slow"}}, inlineService(nil), handlers.NewService("slow", handlers.Config{AllowUnauthenticated: true}))
	if err == nil || !strings.Contains(err.Error(), "asked to run slow inline, which this process does not host (it hosts: fast)") {
		t.Fatalf("got %v", err)
	}
}

func TestResolveInline(t *testing.T) {
	t.Setenv(placement.EnvInline, "")
	if got := placement.ResolveInline(""); got != nil {
		t.Errorf("nothing set: %v, want nil", got)
	}
	t.Setenv(placement.EnvInline, "pricing, mail")
	if got := placement.ResolveInline(""); !slices.Equal(got, []string{"pricing", "mail"}) {
		t.Errorf("from %s: %v", placement.EnvInline, got)
	}
	if got := placement.ResolveInline("stock"); !slices.Equal(got, []string{"stock"}) {
		t.Errorf("the flag before the variable: %v", got)
	}
}
