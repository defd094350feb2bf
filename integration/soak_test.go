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

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
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

// redisStats is what the soak test watches in Redis.
type redisStats struct {
	usedMemory         int64 // INFO memory used_memory, bytes
	keys               int64
	requests, replies  int64 // stream lengths: the service's requests, the client's replies
	deadLetters        int64
	pending, consumers int64 // the service's consumer group
}

func readRedisStats(t *testing.T, rdb *redis.Client, service, inbox string) redisStats {
	t.Helper()
	ctx := context.Background()
	var s redisStats
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, "used_memory:"); ok {
			s.usedMemory, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	s.keys = rdb.DBSize(ctx).Val()
	s.requests = rdb.XLen(ctx, bus.RequestTopic(service)).Val()
	s.replies = rdb.XLen(ctx, inbox).Val()
	s.deadLetters = rdb.XLen(ctx, bus.DeadLetterTopic(service)).Val()
	p, err := rdb.XPending(ctx, bus.RequestTopic(service), bus.Group).Result()
	if err != nil {
		t.Fatal(err)
	}
	s.pending = p.Count
	groups, err := rdb.XInfoGroups(ctx, bus.RequestTopic(service)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if g.Name == bus.Group {
			s.consumers = g.Consumers
		}
	}
	return s
}

// One million calls through one client and two replica processes: in
// every process RSS and goroutines stay flat; in Redis used_memory, the
// key count, the request and reply streams' lengths, the pending entries
// and the consumers stay flat. Run with `make test-soak` (a few minutes).
func TestMillionCallsStayFlat(t *testing.T) {
	const total, conc, sample = 1_000_000, 64, 100_000
	rdb := rdbFor(t, redisURL)
	service := meshtest.Name("soak")
	w1 := startWorker(t, workerSpec{Service: service, Replica: "r1"})
	w2 := startWorker(t, workerSpec{Service: service, Replica: "r2"})
	c := newClient(t, client.Config{})
	type point struct {
		calls                int64
		clientKB, r1KB, r2KB int64
		clientG, r1G, r2G    int
		redis                redisStats
	}
	var points []point
	reached := make(chan int64, total/sample)
	var done, next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	start := time.Now()
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
					reached <- n
				}
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// A snapshot each time another sample of calls is done, taken while
	// the calls go on.
	for waiting := true; waiting; {
		select {
		case n := <-reached:
			runtime.GC()
			points = append(points, point{
				n, rssKB(os.Getpid()), rssKB(w1.cmd.Process.Pid), rssKB(w2.cmd.Process.Pid),
				runtime.NumGoroutine(), w1.goroutines(t), w2.goroutines(t),
				readRedisStats(t, rdb, service, c.Inbox()),
			})
		case <-finished:
			waiting = false
		}
	}
	select {
	case err := <-errs:
		t.Fatalf("call failed: %v", err)
	default:
	}
	el := time.Since(start)
	t.Logf("%d calls in %v (%.0f/s)", total, el.Round(time.Second), float64(total)/el.Seconds())
	t.Logf("%8s %9s %9s %9s %4s %4s %4s %9s %5s %7s %7s %4s %7s %4s", "calls", "client_kB", "r1_kB", "r2_kB", "c_g", "r1_g", "r2_g", "redis_kB", "keys", "req_len", "rep_len", "dead", "pending", "cons")
	for _, p := range points {
		r := p.redis
		t.Logf("%8d %9d %9d %9d %4d %4d %4d %9d %5d %7d %7d %4d %7d %4d", p.calls, p.clientKB, p.r1KB, p.r2KB, p.clientG, p.r1G, p.r2G,
			r.usedMemory/1024, r.keys, r.requests, r.replies, r.deadLetters, r.pending, r.consumers)
	}
	if len(points) < 4 {
		t.Fatalf("%d snapshots, want one per %d calls", len(points), sample)
	}
	first, last := points[1], points[len(points)-1] // after warm-up
	grewKB := func(what string, a, b int64) {
		if b > a+a/10+rssSlackKB {
			t.Errorf("%s grew from %d kB to %d kB (allowed: 10%% + %d kB)", what, a, b, rssSlackKB)
		}
	}
	grewKB("client RSS", first.clientKB, last.clientKB)
	grewKB("replica r1 RSS", first.r1KB, last.r1KB)
	grewKB("replica r2 RSS", first.r2KB, last.r2KB)
	// used_memory rises and falls with the request stream between trims:
	// the highest of the second half against the highest of the first.
	peak := func(ps []point) int64 {
		var m int64
		for _, p := range ps {
			m = max(m, p.redis.usedMemory/1024)
		}
		return m
	}
	half := 1 + (len(points)-1)/2
	grewKB("Redis used_memory (peak)", peak(points[1:half]), peak(points[half:]))
	for _, g := range []struct {
		what        string
		first, last int
	}{{"client", first.clientG, last.clientG}, {"replica r1", first.r1G, last.r1G}, {"replica r2", first.r2G, last.r2G}} {
		if g.last > g.first+5 {
			t.Errorf("%s goroutines went from %d to %d", g.what, g.first, g.last)
		}
	}
	if last.redis.keys != first.redis.keys {
		t.Errorf("Redis keys went from %d to %d", first.redis.keys, last.redis.keys)
	}
	// Acked requests are trimmed every TrimInterval (5 s) by each replica,
	// to the oldest entry a group still needs, so the request stream holds
	// up to about two intervals of calls (230k at 23k calls/s); replies are
	// capped. A stream never trimmed, or trimmed less than it grows,
	// passes three intervals' worth (and a 1M-call run) before the end.
	rate := float64(total) / el.Seconds()
	maxLen := max(int64(2*sample), int64(3*rate*5))
	for _, p := range points[1:] {
		r := p.redis
		if r.requests > maxLen || r.replies > 2*sample {
			t.Errorf("after %d calls the request stream holds %d entries and the reply stream %d, want at most %d and %d", p.calls, r.requests, r.replies, maxLen, 2*sample)
		}
		// Pending: at most the calls in flight (acks go out with replies).
		if r.pending > 2*conc {
			t.Errorf("after %d calls %d requests pending, want at most %d", p.calls, r.pending, 2*conc)
		}
		if r.consumers != 2 || r.deadLetters != 0 {
			t.Errorf("after %d calls %d consumers and %d dead letters, want 2 and 0", p.calls, r.consumers, r.deadLetters)
		}
	}
}

// rssSlackKB is what RSS and used_memory may grow beyond 10% between the
// second snapshot and the last: allocator and GC noise, not a leak (a
// leak of 16 bytes a call is 12 MB over the run).
const rssSlackKB = 6 * 1024
