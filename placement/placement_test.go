package placement_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/placement"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingBus counts the requests that go over the bus.
type countingBus struct {
	bus.Bus
	requests atomic.Int64
}

func (b *countingBus) SendRequest(ctx context.Context, service string, r *bus.Request) error {
	b.requests.Add(1)
	return b.Bus.SendRequest(ctx, service, r)
}

func mathService() *handlers.Service {
	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	handlers.Register(svc, "stuck", func(context.Context, struct{}) (int, error) {
		time.Sleep(400 * time.Millisecond) // ignores its context
		return 1, nil
	})
	handlers.Register(svc, "boom", func(context.Context, struct{}) (int, error) { panic("boom") })
	return svc
}

func mailService(sent chan<- string) *handlers.Service {
	svc := handlers.NewService("mail", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "welcome", func(_ context.Context, to string) (struct{}, error) {
		sent <- to
		return struct{}{}, nil
	})
	return svc
}

// start runs p on b until the test ends.
// localClient starts a process hosting svcs on b and returns a client
// that calls them in-process (no breaker), closed when the test ends.
func localClient(t *testing.T, b bus.Bus, svcs ...*handlers.Service) *client.Client {
	return placedClient(t, b, placement.Config{}, client.Config{Breaker: client.BreakerConfig{Disabled: true}}, svcs...)
}

// placedClient places svcs by pcfg, runs them on b until the test ends,
// and returns a client (ccfg, quiet) whose Local is that placement.
func placedClient(t *testing.T, b bus.Bus, pcfg placement.Config, ccfg client.Config, svcs ...*handlers.Service) *client.Client {
	t.Helper()
	p, err := placement.New(pcfg, svcs...)
	if err != nil {
		t.Fatal(err)
	}
	start(t, p, b)
	ccfg.Local, ccfg.Logger = p, meshtest.Quiet
	c, err := client.New(b, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// servesInProcess checks that c's call of function (meshtest's add) is
// answered, and that no request went over b.
func servesInProcess(t *testing.T, c *client.Client, b *countingBus, function string) {
	t.Helper()
	var out meshtest.AddOut
	if err := c.Call(context.Background(), function, meshtest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("process stopped serving: %v", err)
	}
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("%d requests went over the bus, want 0", n)
	}
}

func start(t *testing.T, p *placement.Process, b bus.Bus) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx, b) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if err := p.Started(sctx); err != nil {
		t.Fatal(err)
	}
}

func TestHostedCallsStayInProcess(t *testing.T) {
	b := &countingBus{Bus: bus.NewMemory()}
	t.Cleanup(func() { b.Close() }) // after start's cleanup has stopped the replicas
	sent := make(chan string, 10)
	p, err := placement.New(placement.Config{Local: []string{"math"}}, mathService(), mailService(sent))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Hosts("math") || p.Hosts("mail") || !slices.Equal(p.Hosted(), []string{"math"}) {
		t.Fatalf("hosted %v", p.Hosted())
	}
	start(t, p, b)
	c, err := client.New(b, client.Config{Local: p, Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 50; i++ {
		var out meshtest.AddOut
		if err := c.Call(context.Background(), "math.add", meshtest.AddIn{A: i, B: 1}, &out); err != nil || out.Sum != i+1 {
			t.Fatalf("call %d: %v %+v", i, err, out)
		}
	}
	if n := b.requests.Load(); n != 0 {
		t.Fatalf("%d calls to a hosted service went over the bus, want 0", n)
	}
	// mail is registered but not hosted: its send goes over the bus (and
	// waits there, as no replica of mail runs).
	if err := c.Send(context.Background(), "mail.welcome", "a@b.c"); err != nil {
		t.Fatal(err)
	}
	if n := b.requests.Load(); n != 1 {
		t.Fatalf("%d requests over the bus, want the send only", n)
	}
}

func TestSendsGoOverTheBusUnlessLocalSends(t *testing.T) {
	for _, local := range []bool{false, true} {
		t.Run(map[bool]string{false: "durable", true: "in-process"}[local], func(t *testing.T) { testSend(t, local) })
	}
}

func testSend(t *testing.T, local bool) {
	{
		b := &countingBus{Bus: bus.NewMemory()}
		t.Cleanup(func() { b.Close() })
		sent := make(chan string, 10)
		p, err := placement.New(placement.Config{}, mailService(sent))
		if err != nil {
			t.Fatal(err)
		}
		start(t, p, b)
		c, err := client.New(b, client.Config{Local: p, LocalSends: local, Logger: meshtest.Quiet})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Send(context.Background(), "mail.welcome", "a@b.c"); err != nil {
			t.Fatal(err)
		}
		select {
		case to := <-sent:
			if to != "a@b.c" {
				t.Fatal(to)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("send not run")
		}
		want := int64(1)
		if local {
			want = 0
		}
		if n := b.requests.Load(); n != want {
			t.Errorf("LocalSends %v: %d requests over the bus, want %d", local, n, want)
		}
		c.Close()
	}
}

// A co-located function that panics or blocks past its deadline behaves
// as over the bus: internal, deadline_exceeded, and the process serves on.
func TestPanicAndStuckFunctionInProcess(t *testing.T) {
	b := &countingBus{Bus: bus.NewMemory()}
	t.Cleanup(func() { b.Close() })
	c := localClient(t, b, mathService())
	fe := meshtest.WantCode(t, c.Call(context.Background(), "math.boom", struct{}{}, nil), fnmesh.CodeInternal)
	if !strings.Contains(fe.Message, "panicked") {
		t.Fatalf("message %q", fe.Message)
	}
	began := time.Now()
	meshtest.WantCode(t, c.Call(context.Background(), "math.stuck", struct{}{}, nil, client.WithTimeout(50*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
	if el := time.Since(began); el > 300*time.Millisecond {
		t.Fatalf("caller waited %v for a function stuck past its 50ms deadline", el)
	}
	servesInProcess(t, c, b, "math.add")
}

func TestUnregisteredServiceRefusesToStart(t *testing.T) {
	_, err := placement.New(placement.Config{Local: []string{"math", "pricing"}}, mathService())
	if err == nil || !strings.Contains(err.Error(), "asked to host pricing, which this program does not register (it registers: math)") {
		t.Fatalf("got %v", err)
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "local.txt")
	os.WriteFile(file, []byte("# services here\nmath, mail\npricing # moving out soon\n"), 0o644)
	t.Setenv(placement.EnvLocal, "")
	t.Setenv(placement.EnvLocalFile, "")
	for _, tc := range []struct {
		flag, env, file string
		want            []string
	}{
		{want: nil},
		{flag: "math,mail", env: "x", want: []string{"math", "mail"}},
		{env: "mail", file: file, want: []string{"mail"}},
		{file: file, want: []string{"math", "mail", "pricing"}},
		{flag: "-", want: []string{}},
	} {
		t.Setenv(placement.EnvLocal, tc.env)
		got, err := placement.Resolve(tc.flag, tc.file)
		if err != nil || !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("Resolve(%q, %q) with env %q = %v %v, want %v", tc.flag, tc.file, tc.env, got, err, tc.want)
		}
	}
	if _, err := placement.Resolve("", filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

// Arguments and results that are not plain values go through JSON, as
// over the bus: the function cannot change the caller's slice, nor the
// caller the function's.
func TestNonPlainValuesAreCopied(t *testing.T) {
	b := bus.NewMemory()
	t.Cleanup(func() { b.Close() })
	kept := []string{"kept"}
	svc := handlers.NewService("lists", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "mangle", func(_ context.Context, in []string) ([]string, error) {
		in[0] = "changed by the function"
		return kept, nil
	})
	c := placedClient(t, b, placement.Config{}, client.Config{}, svc)
	arg := []string{"mine"}
	var out []string
	if err := c.Call(context.Background(), "lists.mangle", arg, &out); err != nil {
		t.Fatal(err)
	}
	out[0] = "changed by the caller"
	if arg[0] != "mine" || kept[0] != "kept" {
		t.Fatalf("memory shared across an in-process call: arg %q, function's %q", arg[0], kept[0])
	}
}

// A full local replica leaves the call to the bus, where a replica (here
// the same process's bus side) takes it.
func TestFullLocalReplicaFallsBackToTheBus(t *testing.T) {
	b := &countingBus{Bus: bus.NewMemory()}
	t.Cleanup(func() { b.Close() })
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	svc := handlers.NewService("slow", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet, Concurrency: 1})
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (string, error) {
		entered <- struct{}{}
		<-release
		return handlers.Info(ctx).Replica, nil
	})
	c := placedClient(t, b, placement.Config{}, client.Config{}, svc)
	errs := make(chan error, 2)
	go func() { errs <- c.Call(context.Background(), "slow.wait", struct{}{}, nil) }()
	<-entered // the one in-process slot is taken
	go func() { errs <- c.Call(context.Background(), "slow.wait", struct{}{}, nil) }()
	<-entered // the second runs too: over the bus
	if n := b.requests.Load(); n != 1 {
		t.Fatalf("%d requests over the bus, want 1 (the call the full replica left)", n)
	}
	close(release)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A call to a hosted service does not wait for the registry: the
// client's registry check, on by default, lets it through even when the
// registry has never seen the service (here it never announces), while
// a client that does not host it is refused with not_found.
func TestHostedServiceSkipsTheRegistryCheck(t *testing.T) {
	b := bus.NewMemory() // a bus with a registry: clients check it
	t.Cleanup(func() { b.Close() })
	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true, NoDiscovery: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	p, err := placement.New(placement.Config{Local: []string{"math"}}, svc)
	if err != nil {
		t.Fatal(err)
	}
	start(t, p, b)
	local, err := client.New(b, client.Config{Local: p, Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	var out meshtest.AddOut
	if err := local.Call(context.Background(), "math.add", meshtest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("hosted call right after start: %v %+v, want 5", err, out)
	}
	remote, err := client.New(b, client.Config{Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	err = remote.Call(context.Background(), "math.add", meshtest.AddIn{A: 2, B: 3}, &out)
	if fnmesh.CodeOf(err) != fnmesh.CodeNotFound {
		t.Fatalf("call from a client that does not host math: %v, want not_found from the registry check", err)
	}
}

// A reply that comes after its call gave up (the function outlived the
// deadline) never reaches a later call of the same client: each gets
// its own result.
func TestLateInProcessReplyReachesNoOtherCall(t *testing.T) {
	b := bus.NewMemory()
	t.Cleanup(func() { b.Close() })
	svc := handlers.NewService("echo", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "echo", func(_ context.Context, in struct{ N, SleepMS int }) (int, error) {
		time.Sleep(time.Duration(in.SleepMS) * time.Millisecond) // ignores its context
		return in.N, nil
	})
	c := localClient(t, b, svc)
	for round := 0; round < 5; round++ {
		late := -1 - round
		meshtest.WantCode(t, c.Call(context.Background(), "echo.echo", struct{ N, SleepMS int }{late, 30}, nil, client.WithTimeout(5*time.Millisecond)), fnmesh.CodeDeadlineExceeded)
		until := time.Now().Add(60 * time.Millisecond) // past the late reply
		for i := 0; time.Now().Before(until); i++ {
			var got int
			if err := c.Call(context.Background(), "echo.echo", struct{ N, SleepMS int }{i, 0}, &got); err != nil || got != i {
				t.Fatalf("call %d got %d, %v (the late reply was %d)", i, got, err, late)
			}
		}
	}
}
