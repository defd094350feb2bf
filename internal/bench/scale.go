package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// ScaleOptions configures RunScale: how calls per second and latency
// change as replica processes of one function are added.
type ScaleOptions struct {
	// Work is what the function does per call: "io" waits IOWait (a
	// database or HTTP call), "cpu" hashes CPUBlocks KiB with SHA-256.
	Work string
	// Counts are the numbers of replica processes to measure. Default 1, 2, 4.
	Counts []int
	// Concurrency is the number of calls in flight. Default 256.
	Concurrency int
	// Duration of each measurement, after a 1 s warm-up. Default 5s.
	Duration time.Duration
	// Rounds repeats the counts in turn, so that each speedup compares
	// measurements taken close in time (a shared machine's speed drifts
	// within minutes), and summarises the rounds by their medians.
	// Default 1.
	Rounds int
	// IOWait is the io function's wait per call. Default 20ms.
	IOWait time.Duration
	// CPUBlocks is the cpu function's work per call, in KiB hashed.
	// Default 4096 (about 3 ms of one core on the development machine,
	// which hashes with SHA extensions: about 1.5 GB/s), so that the
	// function, not the mesh, is what uses the CPU.
	CPUBlocks int
	// RedisURL is the Redis the replicas and the caller share. Required.
	RedisURL string
	// Executable is the fnmesh binary that runs the replicas (`fnmesh
	// bench --mode scale-replica`). Default: this process's own.
	Executable string
	// Out receives the table as it is measured.
	Out io.Writer
}

// ScalePoint is one measurement.
type ScalePoint struct {
	Replicas  int
	PerSecond float64
	P50, P99  time.Duration
	Calls     int64
	Failed    int64
}

// Environment of a replica process started by RunScale.
const (
	envScaleService = "FNMESH_BENCH_SERVICE"
	envScaleWork    = "FNMESH_BENCH_WORK"
	envScaleWait    = "FNMESH_BENCH_IO_WAIT"
	envScaleBlocks  = "FNMESH_BENCH_CPU_BLOCKS"
	envScaleReplica = "FNMESH_BENCH_REPLICA"
)

func (o *ScaleOptions) setDefaults() error {
	if len(o.Counts) == 0 {
		o.Counts = []int{1, 2, 4}
	}
	if o.Concurrency == 0 {
		o.Concurrency = 256
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if o.IOWait == 0 {
		o.IOWait = 20 * time.Millisecond
	}
	if o.CPUBlocks == 0 {
		o.CPUBlocks = 4096
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Executable = exe
	}
	var errs []error
	if o.Work != "io" && o.Work != "cpu" {
		errs = append(errs, fmt.Errorf("bench: work %q, want io or cpu", o.Work))
	}
	if o.RedisURL == "" {
		errs = append(errs, errors.New("bench: scale mode needs --redis: replicas are separate processes"))
	}
	for _, n := range o.Counts {
		if n < 1 {
			errs = append(errs, fmt.Errorf("bench: %d replicas", n))
		}
	}
	if o.Rounds < 1 {
		errs = append(errs, fmt.Errorf("bench: %d rounds", o.Rounds))
	}
	return errors.Join(errs...)
}

// burn hashes blocks KiB: the cpu function's fixed work.
func burn(blocks int) [32]byte {
	var buf [1024]byte
	h := sha256.New()
	for i := 0; i < blocks; i++ {
		buf[0] = byte(i)
		h.Write(buf[:])
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// RunScale measures calls/s and latency at a fixed concurrency for each
// number of replica processes in Counts, printing one table row per count
// and round, and with several rounds a summary: per count, the median of
// its calls/s and of its speedups over the first count of the same round.
// It returns the points of every round, in order.
func RunScale(ctx context.Context, o ScaleOptions) ([]ScalePoint, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	work := fmt.Sprintf("waits %v", o.IOWait)
	if o.Work == "cpu" {
		t0 := time.Now()
		for i := 0; i < 20; i++ {
			burn(o.CPUBlocks)
		}
		work = fmt.Sprintf("hashes %d KiB, %.2f ms of one core", o.CPUBlocks, float64(time.Since(t0).Microseconds())/20/1000)
	}
	fmt.Fprintf(o.Out, "scale work=%s (the function %s per call), %d calls in flight, %v per point, %d cores, load average %s\n",
		o.Work, work, o.Concurrency, o.Duration, numCPU(), LoadAvg())
	fmt.Fprintf(o.Out, "%8s %10s %9s %9s %8s %7s\n", "replicas", "calls/s", "p50_ms", "p99_ms", "speedup", "failed")
	var points []ScalePoint
	perSecond := make([][]float64, len(o.Counts)) // by count, one per round
	speedup := make([][]float64, len(o.Counts))
	for round := 1; round <= o.Rounds; round++ {
		if o.Rounds > 1 {
			fmt.Fprintf(o.Out, "round %d of %d\n", round, o.Rounds)
		}
		first := len(points)
		for i, n := range o.Counts {
			p, err := scalePoint(ctx, o, n)
			if err != nil {
				return points, err
			}
			points = append(points, p)
			s := p.PerSecond / points[first].PerSecond
			perSecond[i] = append(perSecond[i], p.PerSecond)
			speedup[i] = append(speedup[i], s)
			fmt.Fprintf(o.Out, "%8d %10.0f %9.1f %9.1f %7.2fx %7d\n", n, p.PerSecond,
				float64(p.P50.Microseconds())/1000, float64(p.P99.Microseconds())/1000, s, p.Failed)
		}
	}
	if o.Rounds > 1 {
		fmt.Fprintf(o.Out, "median of %d rounds\n%8s %10s %8s %17s\n", o.Rounds, "replicas", "calls/s", "speedup", "speedup range")
		for i, n := range o.Counts {
			lo, hi := slices.Min(speedup[i]), slices.Max(speedup[i])
			fmt.Fprintf(o.Out, "%8d %10.0f %7.2fx %8.2fx-%.2fx\n", n, Median(perSecond[i]), Median(speedup[i]), lo, hi)
		}
	}
	fmt.Fprintf(o.Out, "load average after: %s\n", LoadAvg())
	return points, nil
}

// Median is the median of xs (0 for none); xs is not changed.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	n := strings.Count(string(b), "processor\t:")
	if n == 0 {
		return 1
	}
	return n
}

// LoadAvg is the machine's load average over 1, 5 and 15 minutes, as
// /proc/loadavg has it, or "unknown".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// replicaProc is one replica process.
type replicaProc struct {
	cmd  *exec.Cmd
	exit chan error
}

func startReplica(o ScaleOptions, service string, i int) (*replicaProc, error) {
	cmd := exec.Command(o.Executable, "bench", "--mode", "scale-replica", "--redis", o.RedisURL)
	cmd.Env = append(os.Environ(),
		envScaleService+"="+service, envScaleWork+"="+o.Work,
		envScaleWait+"="+o.IOWait.String(), fmt.Sprintf("%s=%d", envScaleBlocks, o.CPUBlocks),
		fmt.Sprintf("%s=r%d", envScaleReplica, i))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &replicaProc{cmd: cmd, exit: make(chan error, 1)}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
			}
		}
		p.exit <- cmd.Wait()
	}()
	select {
	case <-ready:
		return p, nil
	case err := <-p.exit:
		return nil, fmt.Errorf("bench: replica %d exited: %v", i, err)
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("bench: replica %d not ready in 20s", i)
	}
}

func (p *replicaProc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exit:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exit
	}
}

type scaleArgs struct {
	N int `json:"n"`
}

func scalePoint(ctx context.Context, o ScaleOptions, n int) (ScalePoint, error) {
	service := fmt.Sprintf("scale%d", time.Now().UnixNano())
	var procs []*replicaProc
	defer func() {
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		p, err := startReplica(o, service, i)
		if err != nil {
			return ScalePoint{}, err
		}
		procs = append(procs, p)
	}
	b, err := bus.NewRedis(bus.RedisConfig{URL: o.RedisURL})
	if err != nil {
		return ScalePoint{}, err
	}
	defer b.Close()
	defer b.Client().Del(context.Background(), bus.RequestTopic(service), bus.DeadLetterTopic(service))
	c, err := client.New(b, client.Config{Logger: quiet, Breaker: client.BreakerConfig{Disabled: true}})
	if err != nil {
		return ScalePoint{}, err
	}
	defer c.Close()
	fn := service + ".work"

	var measuring atomic.Bool
	var failed, calls atomic.Int64
	var mu sync.Mutex
	lat := make([]time.Duration, 0, 1<<16)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1024)
			defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				t0 := time.Now()
				var out int
				err := c.Call(ctx, fn, scaleArgs{N: 1}, &out, client.WithTimeout(30*time.Second))
				if !measuring.Load() {
					continue
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				calls.Add(1)
				mine = append(mine, time.Since(t0))
			}
		}()
	}
	time.Sleep(time.Second) // warm-up: connections, goroutines, a full pipeline
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(o.Duration)
	measuring.Store(false)
	el := time.Since(t0)
	close(stop)
	wg.Wait()
	if ctx.Err() != nil {
		return ScalePoint{}, ctx.Err()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := ScalePoint{Replicas: n, Calls: calls.Load(), Failed: failed.Load(), PerSecond: float64(calls.Load()) / el.Seconds()}
	if len(lat) > 0 {
		p.P50, p.P99 = lat[len(lat)/2], lat[int(0.99*float64(len(lat)-1))]
	}
	return p, nil
}

// ServeScaleReplica runs one replica of RunScale's function, configured
// by the environment RunScale gives it, until SIGTERM. It prints "ready"
// once it serves.
func ServeScaleReplica(redisURL string) error {
	service, work := os.Getenv(envScaleService), os.Getenv(envScaleWork)
	wait, _ := time.ParseDuration(os.Getenv(envScaleWait))
	var blocks int
	fmt.Sscan(os.Getenv(envScaleBlocks), &blocks)
	if service == "" || (work != "io" && work != "cpu") {
		return errors.New("bench: scale-replica mode is started by --mode scale")
	}
	b, err := bus.NewRedis(bus.RedisConfig{URL: redisURL})
	if err != nil {
		return err
	}
	defer b.Close()
	// The default concurrency (64 per replica) is part of what is measured.
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: quiet, ReplicaID: os.Getenv(envScaleReplica)})
	handlers.Register(svc, "work", func(ctx context.Context, a scaleArgs) (int, error) {
		if work == "cpu" {
			s := burn(blocks)
			return int(s[0]) + a.N, nil
		}
		select {
		case <-time.After(wait):
			return a.N, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-svc.Started()
		fmt.Println("ready")
	}()
	return svc.Run(ctx, b)
}
