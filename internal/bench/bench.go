// Package bench measures fnmesh calls and sends end to end, the way
// ../shared/peers measures its reference loops, so the figures compare
// in one run: latency from sequential calls, throughput at a fixed
// number in flight.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// Options of one run.
type Options struct {
	Mode        string        // call, send
	Replicas    int           // replicas of the function, each on its own bus connection
	Concurrency int           // calls in flight for throughput
	Duration    time.Duration // of the throughput phase
	Sequential  int           // sequential calls for latency
	RedisURL    string        // "" for the in-memory bus
	// NoStatus turns the status records of sends off (StatusTTL -1 on
	// the client and the service), to tell their cost from the bus's.
	NoStatus bool
}

// Result of one run.
type Result struct {
	Mode       string
	P50, P99   time.Duration // sequential call latency
	PerSecond  float64       // calls (or processed sends) per second
	SentPerSec float64       // send mode: enqueued per second
	Calls      int64
	// CPU time per call in the throughput phase: this process (client and
	// replicas) and the Redis server.
	CPUPerCall, RedisCPUPerCall time.Duration
	AllocsPerCall               float64 // heap allocations of this process per call
}

func (r Result) String() string {
	cpu := fmt.Sprintf(" cpu_us_per_call=%.1f redis_cpu_us_per_call=%.1f allocs_per_call=%.1f", usec(r.CPUPerCall), usec(r.RedisCPUPerCall), r.AllocsPerCall)
	if strings.HasSuffix(r.Mode, "send") {
		return fmt.Sprintf("%s sent_per_s=%.0f processed_per_s=%.0f", r.Mode, r.SentPerSec, r.PerSecond) + cpu
	}
	return fmt.Sprintf("%s p50_us=%d p99_us=%d throughput_per_s=%.0f", r.Mode, r.P50.Microseconds(), r.P99.Microseconds(), r.PerSecond) + cpu
}

func usec(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// perCall divides the meter's CPU times by n.
func (r *Result) perCall(m *cpuMeter, n int64) {
	if n > 0 {
		r.CPUPerCall = m.selfCPU / time.Duration(n)
		r.RedisCPUPerCall = m.redCPU / time.Duration(n)
		r.AllocsPerCall = float64(m.mallocs) / float64(n)
	}
}

type args struct{ A, B int }
type result struct{ Sum int }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func (o *Options) setDefaults() {
	if o.Replicas == 0 {
		o.Replicas = 2
	}
	if o.Concurrency == 0 {
		o.Concurrency = 64
	}
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.Sequential == 0 {
		o.Sequential = 2000
	}
}

// newBus returns a bus factory: one shared memory bus, or a new Redis
// connection per caller (as separate processes would have).
func newBus(o Options) (func() (bus.Bus, error), func()) {
	if o.RedisURL == "" {
		m := bus.NewMemory()
		return func() (bus.Bus, error) { return m, nil }, func() { m.Close() }
	}
	var mu sync.Mutex
	var all []bus.Bus
	return func() (bus.Bus, error) {
			b, err := bus.NewRedis(bus.RedisConfig{URL: o.RedisURL})
			if err == nil {
				mu.Lock()
				all = append(all, b)
				mu.Unlock()
			}
			return b, err
		}, func() {
			mu.Lock()
			defer mu.Unlock()
			for _, b := range all {
				b.Close()
			}
		}
}

// Run measures one mode.
func Run(ctx context.Context, o Options) (Result, error) {
	o.setDefaults()
	switch o.Mode {
	case "call", "send":
	case "raw-call", "raw-send":
		return runRaw(ctx, o)
	default:
		return Result{}, fmt.Errorf("bench: unknown mode %q (call, send, raw-call, raw-send)", o.Mode)
	}
	mk, closeAll := newBus(o)
	defer closeAll()
	service := fmt.Sprintf("bench%d", time.Now().UnixNano())
	var processed atomic.Int64
	var statusTTL time.Duration
	if o.NoStatus {
		statusTTL = -1
	}
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: quiet, Concurrency: max(64, o.Concurrency), StatusTTL: statusTTL})
	handlers.Register(svc, "add", func(_ context.Context, a args) (result, error) {
		processed.Add(1)
		return result{a.A + a.B}, nil
	})
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := 0; i < o.Replicas; i++ {
		b, err := mk()
		if err != nil {
			return Result{}, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); svc.Run(runCtx, b) }()
	}
	<-svc.Started()
	cb, err := mk()
	if err != nil {
		return Result{}, err
	}
	c, err := client.New(cb, client.Config{Logger: quiet, StatusTTL: statusTTL, Breaker: client.BreakerConfig{Disabled: true}})
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	if rb, ok := cb.(*bus.Redis); ok {
		defer rb.Client().Del(context.Background(), bus.RequestTopic(service), bus.DeadLetterTopic(service))
	}
	function := service + ".add" // named once, as a caller names a function
	if o.Mode == "send" {
		return runSend(ctx, o, c, function, &processed)
	}
	return measure(ctx, o, "call", func(ctx context.Context, a args) (result, error) {
		var r result
		err := c.Call(ctx, function, a, &r)
		return r, err
	})
}

type caller func(ctx context.Context, a args) (result, error)

// measure is peers' measure: warm-up, sequential latency, then
// throughput with Concurrency callers for Duration.
func measure(ctx context.Context, o Options, mode string, call caller) (Result, error) {
	for i := 0; i < 200; i++ {
		if _, err := call(ctx, args{i, 1}); err != nil {
			return Result{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	lat := make([]time.Duration, 0, o.Sequential)
	for i := 0; i < o.Sequential; i++ {
		t := time.Now()
		r, err := call(ctx, args{i, 1})
		if err != nil || r.Sum != i+1 {
			return Result{}, fmt.Errorf("call: %v (sum %d)", err, r.Sum)
		}
		lat = append(lat, time.Since(t))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	var done atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	meter := startCPU(o.RedisURL)
	stop := time.Now().Add(o.Duration)
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				r, err := call(ctx, args{w, i})
				if err == nil && r.Sum != w+i {
					err = fmt.Errorf("wrong sum %d", r.Sum)
				}
				if err != nil {
					failed.Store(err)
					return
				}
				done.Add(1)
			}
		}(w)
	}
	wg.Wait()
	meter.stop()
	if err, _ := failed.Load().(error); err != nil {
		return Result{}, err
	}
	r := Result{Mode: mode, P50: pct(0.5), P99: pct(0.99), PerSecond: float64(done.Load()) / o.Duration.Seconds(), Calls: done.Load()}
	r.perCall(meter, done.Load())
	return r, nil
}

// runSend is peers' rawsend: Concurrency producers send for Duration,
// then we wait until every send was processed.
func runSend(ctx context.Context, o Options, c *client.Client, function string, processed *atomic.Int64) (Result, error) {
	return measureSend(ctx, o, "send", processed, func(ctx context.Context) error {
		return c.Send(ctx, function, args{1, 2})
	})
}

// measureSend runs Concurrency producers of send for Duration, waits
// until processed counts every send, and reports both rates: the send
// modes, framework and bare loop alike.
func measureSend(ctx context.Context, o Options, mode string, processed *atomic.Int64, send func(context.Context) error) (Result, error) {
	var sent atomic.Int64
	var failed atomic.Value
	meter := startCPU(o.RedisURL)
	t0 := time.Now()
	stop := t0.Add(o.Duration)
	var wg sync.WaitGroup
	for p := 0; p < o.Concurrency; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := send(ctx); err != nil {
					failed.Store(err)
					return
				}
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return Result{}, err
	}
	for processed.Load() < sent.Load() {
		if time.Since(t0) > o.Duration+60*time.Second {
			return Result{}, errors.New("bench: sends not all processed within 60s")
		}
		time.Sleep(time.Millisecond)
	}
	el := time.Since(t0)
	meter.stop()
	r := Result{Mode: mode, SentPerSec: float64(sent.Load()) / o.Duration.Seconds(), PerSecond: float64(processed.Load()) / el.Seconds(), Calls: processed.Load()}
	r.perCall(meter, processed.Load())
	return r, nil
}

// Ratio compares a framework result with its bare-Redis reference from the
// same run: throughput ratio (higher is better) and p50 ratio (lower is
// better).
func Ratio(r, raw Result) string {
	if r.Mode == "send" {
		return fmt.Sprintf("ratio send/raw-send processed=%.2fx", r.PerSecond/raw.PerSecond)
	}
	return fmt.Sprintf("ratio call/raw-call throughput=%.2fx p50=%.2fx", r.PerSecond/raw.PerSecond, float64(r.P50)/float64(raw.P50))
}
