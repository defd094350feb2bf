package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/placement"
	"github.com/fnmesh/fnmesh/security"
)

// LocalResult compares, in one run, a function called directly, the
// same function co-located (in-process, through the mesh) without and
// with an HS256 token, and over the in-memory bus.
type LocalResult struct {
	DirectP50, LocalP50, LocalTokenP50, MemoryP50 time.Duration
	LocalPerSecond, MemoryPerSecond               float64
	LocalCPU, MemoryCPU                           time.Duration // process CPU per call at throughput
	Ratio                                         float64       // LocalPerSecond / MemoryPerSecond
}

func (r LocalResult) String() string {
	return fmt.Sprintf("local direct_p50_ns=%d colocated_p50_us=%.2f colocated_hs256_p50_us=%.2f memory_p50_us=%.2f"+
		" over_direct_us=%.2f over_direct_hs256_us=%.2f colocated_per_s=%.0f memory_per_s=%.0f throughput_ratio=%.2fx"+
		" cpu_us_per_call_colocated=%.2f cpu_us_per_call_memory=%.2f",
		r.DirectP50.Nanoseconds(), usec(r.LocalP50), usec(r.LocalTokenP50), usec(r.MemoryP50),
		usec(r.LocalP50-r.DirectP50), usec(r.LocalTokenP50-r.DirectP50),
		r.LocalPerSecond, r.MemoryPerSecond, r.Ratio,
		usec(r.LocalCPU), usec(r.MemoryCPU))
}

//go:noinline
func addDirect(_ context.Context, a args) (result, error) { return result{a.A + a.B}, nil }

// RunLocal measures --mode local: rounds of the four ways, one after the
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
	authed := handlers.NewService("benchauth", handlers.Config{Auth: verifier, Logger: quiet, Concurrency: max(64, o.Concurrency)})
	handlers.Register(authed, "add", addDirect)
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
	local, err := client.New(b, client.Config{Local: p, Token: token, Logger: quiet, Breaker: client.BreakerConfig{Disabled: true}})
	if err != nil {
		return LocalResult{}, err
	}
	defer local.Close()
	remote, err := client.New(b, client.Config{Logger: quiet, Breaker: client.BreakerConfig{Disabled: true}})
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
	if out.DirectP50, err = sequentialP50(ctx, o.Sequential, addDirect); err != nil {
		return out, err
	}
	if out.LocalP50, err = sequentialP50(ctx, o.Sequential, via(local, "benchopen.add")); err != nil {
		return out, err
	}
	if out.LocalTokenP50, err = sequentialP50(ctx, o.Sequential, via(local, "benchauth.add")); err != nil {
		return out, err
	}
	lr, err := measure(ctx, o, "colocated", via(local, "benchopen.add"))
	if err != nil {
		return out, err
	}
	mr, err := measure(ctx, o, "memory", via(remote, "benchopen.add"))
	if err != nil {
		return out, err
	}
	out.MemoryP50, out.LocalPerSecond, out.MemoryPerSecond = mr.P50, lr.PerSecond, mr.PerSecond
	out.LocalCPU, out.MemoryCPU = lr.CPUPerCall, mr.CPUPerCall
	out.Ratio = lr.PerSecond / mr.PerSecond
	return out, nil
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
		MemoryP50:       d(func(r LocalResult) time.Duration { return r.MemoryP50 }),
		LocalPerSecond:  med(func(r LocalResult) float64 { return r.LocalPerSecond }),
		MemoryPerSecond: med(func(r LocalResult) float64 { return r.MemoryPerSecond }),
		LocalCPU:        d(func(r LocalResult) time.Duration { return r.LocalCPU }),
		MemoryCPU:       d(func(r LocalResult) time.Duration { return r.MemoryCPU }),
		Ratio:           med(func(r LocalResult) float64 { return r.Ratio }),
	}
}

// MedianLine labels the medians of several rounds.
func MedianLine(rounds int, m LocalResult) string {
	return strings.Replace(m.String(), "local ", fmt.Sprintf("local median_of=%d ", rounds), 1)
}
