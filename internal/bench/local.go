package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/placement"
	"github.com/fnmesh/fnmesh/security"
)

// LocalResult compares, in one run, a function called directly, the
// same function co-located (in-process, through the mesh) on a replica
// worker (the default) and on the caller's goroutine (handlers.Inline),
// each without and with an HS256 token, and over the in-memory bus. The
// clients have the default configuration, circuit breakers included.
type LocalResult struct {
	DirectP50                               time.Duration
	LocalP50, LocalTokenP50                 time.Duration // default co-located path
	InlineP50, InlineTokenP50               time.Duration // handlers.Inline
	MemoryP50                               time.Duration
	LocalPerSecond, InlinePerSecond         float64
	MemoryPerSecond                         float64
	LocalCPU, InlineCPU, MemoryCPU          time.Duration // process CPU per call at throughput
	LocalAllocs, InlineAllocs, MemoryAllocs float64       // heap allocations per call at throughput
	Ratio, InlineRatio                      float64       // calls/s over MemoryPerSecond
}

func (r LocalResult) String() string {
	return fmt.Sprintf("local direct_p50_ns=%d"+
		" colocated_p50_us=%.2f colocated_hs256_p50_us=%.2f inline_p50_us=%.2f inline_hs256_p50_us=%.2f memory_p50_us=%.2f"+
		" over_direct_us=%.2f over_direct_hs256_us=%.2f inline_over_direct_us=%.2f inline_over_direct_hs256_us=%.2f"+
		" colocated_per_s=%.0f inline_per_s=%.0f memory_per_s=%.0f throughput_ratio=%.2fx inline_throughput_ratio=%.2fx"+
		" cpu_us_per_call_colocated=%.2f cpu_us_per_call_inline=%.2f cpu_us_per_call_memory=%.2f"+
		" allocs_per_call_colocated=%.1f allocs_per_call_inline=%.1f allocs_per_call_memory=%.1f",
		r.DirectP50.Nanoseconds(),
		usec(r.LocalP50), usec(r.LocalTokenP50), usec(r.InlineP50), usec(r.InlineTokenP50), usec(r.MemoryP50),
		usec(r.LocalP50-r.DirectP50), usec(r.LocalTokenP50-r.DirectP50), usec(r.InlineP50-r.DirectP50), usec(r.InlineTokenP50-r.DirectP50),
		r.LocalPerSecond, r.InlinePerSecond, r.MemoryPerSecond, r.Ratio, r.InlineRatio,
		usec(r.LocalCPU), usec(r.InlineCPU), usec(r.MemoryCPU),
		r.LocalAllocs, r.InlineAllocs, r.MemoryAllocs)
}

//go:noinline
func addDirect(_ context.Context, a args) (result, error) { return result{a.A + a.B}, nil }

// RunLocal measures --mode local: rounds of the five ways, one after the
// other, and returns each round's figures and their medians.
func RunLocal(ctx context.Context, o Options, rounds int) ([]LocalResult, LocalResult, error) {
	o.setDefaults()
	var all []LocalResult
	for i := 0; i < max(1, rounds); i++ {
		r, err := runLocalRound(ctx, o)
		if err != nil {
			return nil, LocalResult{}, err
		}
		all = append(all, r)
	}
	return all, medianLocal(all), nil
}

func runLocalRound(ctx context.Context, o Options) (LocalResult, error) {
	var secret [32]byte
	rand.Read(secret[:])
	verifier, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: secret[:]})
	if err != nil {
		return LocalResult{}, err
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "bench", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret[:])
	if err != nil {
		return LocalResult{}, err
	}
	open := handlers.NewService("benchopen", handlers.Config{AllowUnauthenticated: true, Logger: quiet, Concurrency: max(64, o.Concurrency)})
	handlers.Register(open, "add", addDirect)
	handlers.Register(open, "addinline", addDirect, handlers.Inline())
	authed := handlers.NewService("benchauth", handlers.Config{Auth: verifier, Logger: quiet, Concurrency: max(64, o.Concurrency)})
	handlers.Register(authed, "add", addDirect)
	handlers.Register(authed, "addinline", addDirect, handlers.Inline())
	p, err := placement.New(placement.Config{}, open, authed)
	if err != nil {
		return LocalResult{}, err
	}
	b := bus.NewMemory()
	defer b.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx, b) }()
	defer func() { stop(); <-done }()
	if err := p.Started(ctx); err != nil {
		return LocalResult{}, err
	}
	local, err := client.New(b, client.Config{Local: p, Token: token, Logger: quiet})
	if err != nil {
		return LocalResult{}, err
	}
	defer local.Close()
	remote, err := client.New(b, client.Config{Logger: quiet})
	if err != nil {
		return LocalResult{}, err
	}
	defer remote.Close()
	via := func(c *client.Client, function string) caller {
		return func(ctx context.Context, a args) (result, error) {
			var r result
			err := c.Call(ctx, function, a, &r)
			return r, err
		}
	}
	var out LocalResult
	for _, m := range []struct {
		p    *time.Duration
		call caller
	}{
		{&out.DirectP50, addDirect},
		{&out.LocalP50, via(local, "benchopen.add")},
		{&out.LocalTokenP50, via(local, "benchauth.add")},
		{&out.InlineP50, via(local, "benchopen.addinline")},
		{&out.InlineTokenP50, via(local, "benchauth.addinline")},
	} {
		if *m.p, err = sequentialP50(ctx, o.Sequential, m.call); err != nil {
			return out, err
		}
	}
	// Throughput in short turns, the three ways one after the other, ten
	// times over: a change in the machine's load then falls on all three
	// alike, not on whichever ran during it.
	ways := []caller{via(local, "benchopen.add"), via(remote, "benchopen.add"), via(local, "benchopen.addinline")}
	var spans [3]span
	for _, call := range ways {
		if err := warmUp(ctx, call); err != nil {
			return out, err
		}
	}
	for turn := 0; turn < localTurns; turn++ {
		for k, call := range ways {
			sp, err := throughput(ctx, o.Concurrency, o.Duration/localTurns, call)
			if err != nil {
				return out, err
			}
			spans[k].add(sp)
		}
	}
	lr, mr, ir := spans[0].result(), spans[1].result(), spans[2].result()
	if out.MemoryP50, err = sequentialP50(ctx, o.Sequential, via(remote, "benchopen.add")); err != nil {
		return out, err
	}
	out.LocalPerSecond, out.InlinePerSecond, out.MemoryPerSecond = lr.PerSecond, ir.PerSecond, mr.PerSecond
	out.LocalCPU, out.InlineCPU, out.MemoryCPU = lr.CPUPerCall, ir.CPUPerCall, mr.CPUPerCall
	out.LocalAllocs, out.InlineAllocs, out.MemoryAllocs = lr.AllocsPerCall, ir.AllocsPerCall, mr.AllocsPerCall
	out.Ratio, out.InlineRatio = lr.PerSecond/mr.PerSecond, ir.PerSecond/mr.PerSecond
	return out, nil
}

// localTurns is how many turns --mode local's throughput phase takes
// per way, each a tenth of --duration.
const localTurns = 10

// span is calls made in some time, with the process CPU and allocations
// they took.
type span struct {
	calls   int64
	elapsed time.Duration
	cpu     time.Duration
	mallocs uint64
}

func (s *span) add(o span) {
	s.calls += o.calls
	s.elapsed += o.elapsed
	s.cpu += o.cpu
	s.mallocs += o.mallocs
}

func (s span) result() Result {
	r := Result{Calls: s.calls}
	if s.calls > 0 && s.elapsed > 0 {
		r.PerSecond = float64(s.calls) / s.elapsed.Seconds()
		r.CPUPerCall = s.cpu / time.Duration(s.calls)
		r.AllocsPerCall = float64(s.mallocs) / float64(s.calls)
	}
	return r
}

func warmUp(ctx context.Context, call caller) error {
	for i := 0; i < 200; i++ {
		if _, err := call(ctx, args{i, 1}); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	return nil
}

// throughput runs callers goroutines calling call for d. Unlike measure,
// a caller does not read the clock after each call (a clock read costs
// about 0.1 us on the development VM, a tenth of a co-located call): a
// timer ends the run.
func throughput(ctx context.Context, callers int, d time.Duration, call caller) (span, error) {
	var stop atomic.Bool
	var done atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	meter := startCPU("")
	t0 := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(0)
			for i := 0; !stop.Load(); i++ {
				r, err := call(ctx, args{w, i})
				if err == nil && r.Sum != w+i {
					err = fmt.Errorf("wrong sum %d", r.Sum)
				}
				if err != nil {
					failed.Store(err)
					break
				}
				n++
			}
			done.Add(n)
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	meter.stop()
	if err, _ := failed.Load().(error); err != nil {
		return span{}, err
	}
	return span{calls: done.Load(), elapsed: elapsed, cpu: meter.selfCPU, mallocs: meter.mallocs}, nil
}

// sequentialP50 times n sequential calls after a warm-up.
func sequentialP50(ctx context.Context, n int, call caller) (time.Duration, error) {
	for i := 0; i < 200; i++ {
		if _, err := call(ctx, args{i, 1}); err != nil {
			return 0, fmt.Errorf("warm-up: %w", err)
		}
	}
	lat := make([]time.Duration, n)
	for i := range lat {
		t := time.Now()
		r, err := call(ctx, args{i, 1})
		lat[i] = time.Since(t)
		if err != nil || r.Sum != i+1 {
			return 0, fmt.Errorf("call: %v (sum %d)", err, r.Sum)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], nil
}

func medianLocal(rs []LocalResult) LocalResult {
	med := func(get func(LocalResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	d := func(get func(LocalResult) time.Duration) time.Duration {
		return time.Duration(med(func(r LocalResult) float64 { return float64(get(r)) }))
	}
	return LocalResult{
		DirectP50:       d(func(r LocalResult) time.Duration { return r.DirectP50 }),
		LocalP50:        d(func(r LocalResult) time.Duration { return r.LocalP50 }),
		LocalTokenP50:   d(func(r LocalResult) time.Duration { return r.LocalTokenP50 }),
		InlineP50:       d(func(r LocalResult) time.Duration { return r.InlineP50 }),
		InlineTokenP50:  d(func(r LocalResult) time.Duration { return r.InlineTokenP50 }),
		MemoryP50:       d(func(r LocalResult) time.Duration { return r.MemoryP50 }),
		LocalPerSecond:  med(func(r LocalResult) float64 { return r.LocalPerSecond }),
		InlinePerSecond: med(func(r LocalResult) float64 { return r.InlinePerSecond }),
		MemoryPerSecond: med(func(r LocalResult) float64 { return r.MemoryPerSecond }),
		LocalCPU:        d(func(r LocalResult) time.Duration { return r.LocalCPU }),
		InlineCPU:       d(func(r LocalResult) time.Duration { return r.InlineCPU }),
		MemoryCPU:       d(func(r LocalResult) time.Duration { return r.MemoryCPU }),
		LocalAllocs:     med(func(r LocalResult) float64 { return r.LocalAllocs }),
		InlineAllocs:    med(func(r LocalResult) float64 { return r.InlineAllocs }),
		MemoryAllocs:    med(func(r LocalResult) float64 { return r.MemoryAllocs }),
		Ratio:           med(func(r LocalResult) float64 { return r.Ratio }),
		InlineRatio:     med(func(r LocalResult) float64 { return r.InlineRatio }),
	}
}

// MedianLine labels the medians of several rounds.
func MedianLine(rounds int, m LocalResult) string {
	return strings.Replace(m.String(), "local ", fmt.Sprintf("local median_of=%d ", rounds), 1)
}
