package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/registry"
)

// A worker is this test binary run again as one replica of a service, so
// that tests can kill, stop and add real processes. TestMain calls
// runWorkerIfAsked before anything else.
const workerEnv = "FNMESH_TEST_WORKER"

type workerSpec struct {
	Service       string
	Replica       string
	Concurrency   int
	Drain         time.Duration
	Redis         string
	ClaimIdle     time.Duration
	MaxDeliveries int
	CrashFile     string // worker.crash exits the process while this file exists
	Registry      bool   // announce in the registry (heartbeat 100ms, TTL 1s)
}

func (w workerSpec) env() []string {
	return append(os.Environ(),
		workerEnv+"=1",
		"W_SERVICE="+w.Service, "W_REPLICA="+w.Replica, "W_REDIS="+w.Redis,
		"W_CONCURRENCY="+strconv.Itoa(w.Concurrency), "W_DRAIN="+w.Drain.String(),
		"W_CLAIM_IDLE="+w.ClaimIdle.String(), "W_MAX_DELIVERIES="+strconv.Itoa(w.MaxDeliveries),
		"W_CRASH_FILE="+w.CrashFile, "W_REGISTRY="+strconv.FormatBool(w.Registry),
	)
}

// SleepIn asks worker.sleep to wait Ms milliseconds; Key, when set, is
// recorded in Redis (HINCRBY runs:SERVICE KEY 1) after the wait, so tests
// count runs across processes.
type SleepIn struct {
	Ms  int    `json:"ms"`
	Key string `json:"key,omitempty"`
}

func runWorkerIfAsked() {
	if os.Getenv(workerEnv) == "" {
		return
	}
	dur := func(k string) time.Duration { d, _ := time.ParseDuration(os.Getenv(k)); return d }
	conc, _ := strconv.Atoi(os.Getenv("W_CONCURRENCY"))
	maxDeliveries, _ := strconv.Atoi(os.Getenv("W_MAX_DELIVERIES"))
	service, replica := os.Getenv("W_SERVICE"), os.Getenv("W_REPLICA")
	b, err := bus.NewRedis(bus.RedisConfig{URL: os.Getenv("W_REDIS"), ClaimIdle: dur("W_CLAIM_IDLE")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	rdb := b.Client()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := handlers.Config{
		AllowUnauthenticated: true, ReplicaID: replica, Concurrency: conc, DrainTimeout: dur("W_DRAIN"), Logger: log,
		MaxDeliveries: maxDeliveries,
		// Sends retry long enough (about 17 s) to outlast the Redis
		// outage of TestRedisRestartUnderLoad: record writes to that
		// Redis, and a send whose own function failed for good is
		// dead-lettered, which that test would count as not run.
		Retry: handlers.RetryPolicy{MaxAttempts: 40, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 500 * time.Millisecond},
	}
	if os.Getenv("W_REGISTRY") == "true" {
		cfg.Plugins = []handlers.Plugin{registry.NewAnnouncer(registry.Config{Heartbeat: 100 * time.Millisecond, TTL: time.Second})}
	}
	svc := handlers.NewService(service, cfg)
	handlers.Register(svc, "who", func(ctx context.Context, _ struct{}) (string, error) {
		return replica, nil
	})
	handlers.Register(svc, "sleep", func(ctx context.Context, in SleepIn) (string, error) {
		select {
		case <-time.After(time.Duration(in.Ms) * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		if in.Key != "" {
			if err := rdb.HIncrBy(context.WithoutCancel(ctx), "runs:"+service, in.Key, 1).Err(); err != nil {
				return "", err
			}
		}
		return replica, nil
	})
	// record is the effect the fault tests count: after Ms milliseconds it
	// adds one to runs:SERVICE[Key].
	handlers.Register(svc, "record", func(ctx context.Context, in SleepIn) (struct{}, error) {
		select {
		case <-time.After(time.Duration(in.Ms) * time.Millisecond):
		case <-ctx.Done():
			return struct{}{}, ctx.Err()
		}
		return struct{}{}, rdb.HIncrBy(context.WithoutCancel(ctx), "runs:"+service, in.Key, 1).Err()
	})
	// crash kills the whole process while the crash file exists: a
	// request no replica survives.
	handlers.Register(svc, "crash", func(ctx context.Context, in SleepIn) (struct{}, error) {
		if f := os.Getenv("W_CRASH_FILE"); f != "" {
			if _, err := os.Stat(f); err == nil {
				// Counted first: the tests bound how often it runs.
				rdb.HIncrBy(ctx, "crashes:"+service, in.Key, 1)
				fmt.Println("crashing on", in.Key)
				os.Exit(3)
			}
		}
		return struct{}{}, rdb.HIncrBy(context.WithoutCancel(ctx), "runs:"+service, in.Key, 1).Err()
	})
	// SIGUSR1 asks for the process's goroutine count (after a GC), which
	// the soak test watches in every process.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			runtime.GC()
			fmt.Printf("%s%d\n", goroutinesLine, runtime.NumGoroutine())
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	go func() {
		<-svc.Started()
		fmt.Println("ready", replica)
	}()
	start := time.Now()
	err = svc.Run(ctx, b)
	stop()
	fmt.Printf("stopped %s drain_ms=%d\n", replica, time.Since(start).Milliseconds())
	b.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
	os.Exit(0)
}

// worker is a running worker process.
type worker struct {
	spec  workerSpec
	cmd   *exec.Cmd
	lines chan string
	exit  chan error
	mu    sync.Mutex
	out   []string
	at    []time.Time // when each line of out was read
}

// startWorker starts a worker process and waits until it serves.
func startWorker(t testing.TB, spec workerSpec) *worker {
	t.Helper()
	w := spawnWorker(t, spec)
	select {
	case l := <-w.lines:
		if !strings.HasPrefix(l, "ready") {
			t.Fatalf("worker %s: %q", w.spec.Replica, l)
		}
	case err := <-w.exit:
		t.Fatalf("worker %s exited: %v", w.spec.Replica, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("worker %s not ready in 20s", w.spec.Replica)
	}
	return w
}

// spawnWorker starts a worker process without waiting for it: for one
// that may die before it is ready (it finishes a request that kills it).
func spawnWorker(t testing.TB, spec workerSpec) *worker {
	t.Helper()
	if spec.Redis == "" {
		spec.Redis = redisURL
	}
	if spec.Concurrency == 0 {
		spec.Concurrency = 64
	}
	w := &worker{spec: spec, lines: make(chan string, 100), exit: make(chan error, 1)}
	w.cmd = exec.Command(os.Args[0])
	w.cmd.Env = spec.env()
	w.cmd.Stderr = os.Stderr
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go w.read(stdout)
	t.Cleanup(func() { w.kill() })
	return w
}

func (w *worker) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		w.mu.Lock()
		w.out = append(w.out, sc.Text())
		w.at = append(w.at, time.Now())
		w.mu.Unlock()
		select {
		case w.lines <- sc.Text():
		default:
		}
	}
	w.exit <- w.cmd.Wait()
}

// kill sends SIGKILL, as a crash would, and waits for the process.
func (w *worker) kill() {
	if w.cmd.Process != nil {
		w.cmd.Process.Kill()
	}
	w.wait(10 * time.Second)
}

// terminate sends SIGTERM and returns the process's exit error.
func (w *worker) terminate(d time.Duration) error {
	w.cmd.Process.Signal(syscall.SIGTERM)
	return w.wait(d)
}

func (w *worker) wait(d time.Duration) error {
	select {
	case err := <-w.exit:
		w.exit <- err // later waits see it too
		return err
	case <-time.After(d):
		return fmt.Errorf("worker %s still running after %v", w.spec.Replica, d)
	}
}

// exited reports whether the process has ended.
func (w *worker) exited() bool {
	select {
	case err := <-w.exit:
		w.exit <- err
		return true
	default:
		return false
	}
}

// output returns what the worker printed on stdout.
func (w *worker) output() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.out...)
}

// lineAt returns when the worker printed its first line starting with
// prefix.
func (w *worker) lineAt(prefix string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, l := range w.out {
		if strings.HasPrefix(l, prefix) {
			return w.at[i], true
		}
	}
	return time.Time{}, false
}

const goroutinesLine = "goroutines "

// goroutines asks the worker for its goroutine count (SIGUSR1) and
// returns it.
func (w *worker) goroutines(t testing.TB) int {
	t.Helper()
	count := func() (n int, last string) {
		for _, l := range w.output() {
			if strings.HasPrefix(l, goroutinesLine) {
				n, last = n+1, l
			}
		}
		return n, last
	}
	before, _ := count()
	if err := w.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if n, last = count(); n > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s did not report its goroutines", w.spec.Replica)
		}
		time.Sleep(5 * time.Millisecond) // its stdout has no signal of its own
	}
	g, err := strconv.Atoi(strings.TrimPrefix(last, goroutinesLine))
	if err != nil {
		t.Fatalf("worker %s: %q", w.spec.Replica, last)
	}
	return g
}
