//go:build soak

package integration

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus/bustest"
	"github.com/fnmesh/fnmesh/client"
)

// rssKB reads a process's resident set size.
func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

// One million calls through one client and two replica processes: the
// client's and the replicas' RSS, goroutines and the Redis key count stay
// flat. Run with `make test-soak` (about two minutes).
func TestMillionCallsStayFlat(t *testing.T) {
	const total, conc, sample = 1_000_000, 64, 100_000
	rdb := rdbFor(t, redisURL)
	service := bustest.Name("soak")
	w1 := startWorker(t, workerSpec{Service: service, Replica: "r1"})
	w2 := startWorker(t, workerSpec{Service: service, Replica: "r2"})
	c := newClient(t, client.Config{})
	var done atomic.Int64
	var wg sync.WaitGroup
	type point struct {
		calls                int64
		clientKB, r1KB, r2KB int64
		keys                 int64
		goroutines           int
	}
	var points []point
	var mu sync.Mutex
	snap := func() {
		runtime.GC()
		mu.Lock()
		points = append(points, point{done.Load(), rssKB(os.Getpid()), rssKB(w1.cmd.Process.Pid), rssKB(w2.cmd.Process.Pid),
			rdb.DBSize(context.Background()).Val(), runtime.NumGoroutine()})
		mu.Unlock()
	}
	start := time.Now()
	var next atomic.Int64
	errs := make(chan error, 1)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= total {
				var by string
				if err := c.Call(context.Background(), service+".who", struct{}{}, &by); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				if n := done.Add(1); n%sample == 0 {
					snap()
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("call failed: %v", err)
	default:
	}
	el := time.Since(start)
	t.Logf("%d calls in %v (%.0f/s)", total, el.Round(time.Second), float64(total)/el.Seconds())
	t.Logf("%10s %10s %10s %10s %6s %10s", "calls", "client_kB", "r1_kB", "r2_kB", "keys", "goroutines")
	for _, p := range points {
		t.Logf("%10d %10d %10d %10d %6d %10d", p.calls, p.clientKB, p.r1KB, p.r2KB, p.keys, p.goroutines)
	}
	first, last := points[1], points[len(points)-1] // after warm-up
	grew := func(name string, a, b int64) {
		if b > a+a/4+8*1024 {
			t.Errorf("%s RSS grew from %d kB to %d kB", name, a, b)
		}
	}
	grew("client", first.clientKB, last.clientKB)
	grew("replica r1", first.r1KB, last.r1KB)
	grew("replica r2", first.r2KB, last.r2KB)
	if last.keys != first.keys {
		t.Errorf("Redis keys went from %d to %d", first.keys, last.keys)
	}
	if last.goroutines > first.goroutines+5 {
		t.Errorf("goroutines went from %d to %d", first.goroutines, last.goroutines)
	}
}
