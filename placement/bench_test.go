package placement_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/placement"
	"github.com/fnmesh/fnmesh/security"
)

var benchSecret = []byte("placement-bench-secret-0123456789abcdef")

// benchIn has no validate tags: the benchmarks measure the mesh, not
// validation rules.
type benchIn struct{ A, B int }
type benchOut struct{ Sum int }

//go:noinline
func add(_ context.Context, in benchIn) (benchOut, error) {
	return benchOut{Sum: in.A + in.B}, nil
}

// colocated returns a client calling math.add in-process (local) or over
// the in-memory bus, with or without a token check. math.addinline is the
// same function registered with handlers.Inline.
func colocated(tb testing.TB, local, withToken bool) *client.Client {
	tb.Helper()
	b := bus.NewMemory()
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet}
	var token string
	if withToken {
		v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: benchSecret})
		if err != nil {
			tb.Fatal(err)
		}
		cfg = handlers.Config{Auth: v, Logger: meshtest.Quiet}
		token, err = jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "bench", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(benchSecret)
		if err != nil {
			tb.Fatal(err)
		}
	}
	svc := handlers.NewService("math", cfg)
	handlers.Register(svc, "add", add)
	handlers.Register(svc, "addinline", add, handlers.Inline())
	p, err := placement.New(placement.Config{}, svc)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx, b); close(done) }()
	if err := p.Started(ctx); err != nil {
		tb.Fatal(err)
	}
	ccfg := client.Config{Token: token, Logger: meshtest.Quiet}
	if local {
		ccfg.Local = p
	}
	c, err := client.New(b, ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(); cancel(); <-done; b.Close() })
	return c
}

func benchCalls(b *testing.B, c *client.Client, function string) {
	ctx := context.Background()
	in := benchIn{A: 1, B: 2}
	var out benchOut
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		if err := c.Call(ctx, function, in, &out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkDirect is the baseline: the Go function called directly.
func BenchmarkDirect(b *testing.B) {
	ctx := context.Background()
	in := benchIn{A: 1, B: 2}
	f := add
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		out, err := f(ctx, in)
		if err != nil || out.Sum != 3 {
			b.Fatal(err)
		}
	}
}

func BenchmarkColocatedCall(b *testing.B) { benchCalls(b, colocated(b, true, false), "math.add") }
func BenchmarkColocatedCallHS256(b *testing.B) {
	benchCalls(b, colocated(b, true, true), "math.add")
}
func BenchmarkInlineCall(b *testing.B) { benchCalls(b, colocated(b, true, false), "math.addinline") }
func BenchmarkInlineCallHS256(b *testing.B) {
	benchCalls(b, colocated(b, true, true), "math.addinline")
}
func BenchmarkMemoryBusCall(b *testing.B) { benchCalls(b, colocated(b, false, false), "math.add") }
func BenchmarkMemoryBusCallHS256(b *testing.B) {
	benchCalls(b, colocated(b, false, true), "math.add")
}

// The Parallel benchmarks keep 64 calls in flight, as fnmesh bench --mode
// local does for throughput.
func benchParallel(b *testing.B, c *client.Client, function string) {
	b.ReportAllocs()
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		var out benchOut
		for pb.Next() {
			if err := c.Call(context.Background(), function, benchIn{A: 1, B: 2}, &out); err != nil {
				b.Error(err)
				return
			}
		}
	})
	// On a shared machine the time per call says how much of it the
	// process got; its CPU per call says what a call costs.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time the process used so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkColocatedCallParallel(b *testing.B) {
	benchParallel(b, colocated(b, true, false), "math.add")
}
func BenchmarkInlineCallParallel(b *testing.B) {
	benchParallel(b, colocated(b, true, false), "math.addinline")
}
func BenchmarkMemoryBusCallParallel(b *testing.B) {
	benchParallel(b, colocated(b, false, false), "math.add")
}

// BenchmarkPaths runs b.N calls on each path in turn, 64 in flight, and
// reports in one run what the goal compares: calls per second of
// the co-located path (on a replica worker) and of the inline opt-in over
// those of the in-memory bus (x-bus), and CPU per call of each. The
// direct call is BenchmarkDirect.
func BenchmarkPaths(b *testing.B) {
	paths := []struct {
		name     string
		c        *client.Client
		function string
	}{
		{"bus", colocated(b, false, false), "math.add"},
		{"colocated", colocated(b, true, false), "math.add"},
		{"inline", colocated(b, true, false), "math.addinline"},
	}
	perSecond := map[string]float64{}
	b.ResetTimer()
	for _, p := range paths {
		elapsed, cpu := inFlight(b, p.c, p.function, b.N, 64)
		perSecond[p.name] = float64(b.N) / elapsed.Seconds()
		b.ReportMetric(float64(cpu)/float64(b.N), p.name+"-cpu-ns/call")
	}
	b.ReportMetric(perSecond["colocated"]/perSecond["bus"], "colocated-x-bus")
	b.ReportMetric(perSecond["inline"]/perSecond["bus"], "inline-x-bus")
}

// inFlight makes n calls with callers goroutines and returns the time
// they took and the process CPU they used.
func inFlight(b *testing.B, c *client.Client, function string, n, callers int) (time.Duration, time.Duration) {
	var next atomic.Int64
	var wg sync.WaitGroup
	t0, cpu0 := time.Now(), processCPU()
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out benchOut
			for next.Add(1) <= int64(n) {
				if err := c.Call(context.Background(), function, benchIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
					b.Errorf("%s: %v", function, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(t0), processCPU() - cpu0
}
