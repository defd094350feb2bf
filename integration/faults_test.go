package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/bus/bustest"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/internal/redistest"
)

// Fault tests: real replica processes killed, stopped and restarted, and
// a real redis-server restarted. Each logs its counts and asserts them.

// faultClaimIdle is short, for fast take-overs, yet long enough that a
// replica starved of CPU on a busy 2-core machine keeps its leases.
const faultClaimIdle = 3 * time.Second

func rdbFor(t testing.TB, url string) *redis.Client {
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// sendAll sends n record requests from conc goroutines; key(i) names each.
func sendAll(t *testing.T, c *client.Client, service string, n, conc, ms int, opts func(i int) []client.CallOption) (accepted int64) {
	t.Helper()
	var wg sync.WaitGroup
	var ok atomic.Int64
	var next atomic.Int64
	errs := make(chan error, 1)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				var o []client.CallOption
				if opts != nil {
					o = opts(i)
				}
				if err := c.Send(context.Background(), service+".record", SleepIn{Ms: ms, Key: "k" + strconv.Itoa(i)}, o...); err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("send failed: %v", err)
	default:
	}
	return ok.Load()
}

// runCounts returns how often each key ran.
func runCounts(t *testing.T, rdb *redis.Client, hash string) map[string]int {
	m, err := rdb.HGetAll(context.Background(), hash).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k], _ = strconv.Atoi(v)
	}
	return out
}

func waitHLen(t *testing.T, rdb *redis.Client, hash string, n int64, d time.Duration) {
	t.Helper()
	bustest.Eventually(t, d, fmt.Sprintf("%s did not reach %d keys", hash, n), func() bool {
		return rdb.HLen(context.Background(), hash).Val() >= n
	})
}

// 10,000 sends while one of three replica processes is killed with
// SIGKILL and restarted: every send runs at least once; runs repeated are
// bounded by what the killed replica had in flight. Then the same with
// idempotency keys, every key sent twice (a caller retrying): the effect
// happens once per key, and the second sends are not run.
func TestKillReplicaDuringSends(t *testing.T) {
	t.Parallel()
	const n, conc = 10000, 16
	rdb := rdbFor(t, redisURL)
	for _, keyed := range []bool{false, true} {
		service := bustest.Name("kill")
		workers := make([]*worker, 3)
		spec := func(i int) workerSpec {
			// A longer claim idle than the take-over tests: this test counts
			// the runs the kill repeats, and race-built replicas on a
			// starved machine can stall past a short one and lose leases.
			return workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), Concurrency: conc, ClaimIdle: 2 * faultClaimIdle}
		}
		for i := range workers {
			workers[i] = startWorker(t, spec(i))
		}
		c := newClient(t, client.Config{})
		var opts func(i int) []client.CallOption
		sends := n
		if keyed {
			sends = 2 * n // every key twice
			opts = func(i int) []client.CallOption {
				return []client.CallOption{client.WithIdempotencyKey("k" + strconv.Itoa(i%n))}
			}
		}
		produced := make(chan int64, 1)
		go func() {
			produced <- sendAllKeys(t, c, service, sends, n, opts)
		}()
		waitHLen(t, rdb, "runs:"+service, n/4, 60*time.Second)
		workers[1].kill()
		killedAt := rdb.HLen(context.Background(), "runs:"+service).Val()
		time.Sleep(300 * time.Millisecond) // the replica stays dead a moment: the scenario
		workers[1] = startWorker(t, spec(1))
		if acc := <-produced; acc != int64(sends) {
			t.Fatalf("only %d of %d sends accepted", acc, sends)
		}
		waitHLen(t, rdb, "runs:"+service, n, 90*time.Second)
		runs := runCounts(t, rdb, "runs:"+service)
		twice, total := 0, 0
		for i := 0; i < n; i++ {
			k := runs["k"+strconv.Itoa(i)]
			if k == 0 {
				t.Fatalf("k%d never ran", i)
			}
			total += k
			if k > 1 {
				twice++
			}
		}
		label := "without idempotency keys"
		if keyed {
			label = "with idempotency keys, each sent twice"
		}
		t.Logf("%s: %d sends, %d keys ran, %d ran more than once, %d runs in all; killed after %d of %d keys",
			label, sends, len(runs), twice, total, killedAt, n)
		if twice > conc {
			t.Errorf("%d keys ran twice, more than the %d the killed replica could hold", twice, conc)
		}
		if keyed {
			if total > n+conc {
				t.Errorf("%d runs for %d keys sent twice each: the second sends were not skipped", total, n)
			}
			effects := runCounts(t, rdb, "effects:"+service)
			if len(effects) != n {
				t.Errorf("%d effects recorded, want exactly %d (one per key)", len(effects), n)
			}
		}
		for _, w := range workers {
			w.kill()
		}
	}
}

// sendAllKeys sends `sends` record requests for keys k0..k(n-1) in turn.
func sendAllKeys(t *testing.T, c *client.Client, service string, sends, n int, opts func(i int) []client.CallOption) int64 {
	var wg sync.WaitGroup
	var ok, next atomic.Int64
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= sends {
					return
				}
				var o []client.CallOption
				if opts != nil {
					o = opts(i)
				}
				if err := c.Send(context.Background(), service+".record", SleepIn{Ms: 2, Key: "k" + strconv.Itoa(i%n)}, o...); err == nil {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return ok.Load()
}

// Calls in flight when a replica is killed: each is answered by another
// replica or fails with a code, within its deadline; none hangs.
func TestCallsInFlightAtKill(t *testing.T) {
	t.Parallel()
	service := bustest.Name("inflight")
	var workers []*worker
	for i := 0; i < 3; i++ {
		workers = append(workers, startWorker(t, workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), Concurrency: 16, ClaimIdle: faultClaimIdle}))
	}
	c := newClient(t, client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	const calls = 48
	const timeout = 8 * time.Second
	type outcome struct {
		by   string
		code fnmesh.Code
		took time.Duration
	}
	results := make(chan outcome, calls)
	for i := 0; i < calls; i++ {
		go func() {
			start := time.Now()
			var by string
			err := c.Call(context.Background(), service+".sleep", SleepIn{Ms: 500}, &by, client.WithTimeout(timeout))
			results <- outcome{by, fnmesh.CodeOf(err), time.Since(start)}
		}()
	}
	time.Sleep(150 * time.Millisecond) // the calls are running on all three: the scenario
	workers[0].kill()
	answered, failed := map[string]int{}, map[fnmesh.Code]int{}
	for i := 0; i < calls; i++ {
		select {
		case o := <-results:
			if o.took > timeout+time.Second {
				t.Errorf("a call returned after %v, past its %v deadline", o.took, timeout)
			}
			if o.code == "" {
				answered[o.by]++
			} else {
				failed[o.code]++
			}
		case <-time.After(timeout + 5*time.Second):
			t.Fatalf("%d calls still hang after their deadline", calls-i)
		}
	}
	t.Logf("%d calls in flight at the kill: answered by %v, failed %v", calls, answered, failed)
	if answered["r0"] > 0 {
		// r0 died 150ms into 500ms calls: it cannot have answered.
		t.Errorf("the killed replica answered %d calls", answered["r0"])
	}
	if answered["r1"]+answered["r2"] < calls-len(failed) {
		t.Errorf("answers do not add up: %v %v", answered, failed)
	}
	for code := range failed {
		if code != fnmesh.CodeDeadlineExceeded && code != fnmesh.CodeUnavailable {
			t.Errorf("calls failed with %s, want deadline_exceeded or unavailable if anything", code)
		}
	}
	if failed[fnmesh.CodeDeadlineExceeded] > 0 {
		t.Errorf("%d calls ran out of their %v deadline: the killed replica's calls were not taken over in time", failed[fnmesh.CodeDeadlineExceeded], timeout)
	}
}

// redis-server killed and restarted mid-load, with AOF (fsync always):
// no replica or client process exits, every send acknowledged before or
// after the restart runs, and calls work again.
func TestRedisRestartUnderLoad(t *testing.T) {
	t.Parallel()
	srv, err := redistest.Start(redistest.Options{AOF: true, Args: []string{"--appendfsync", "always"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	service := bustest.Name("restart")
	w1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Redis: srv.URL, ClaimIdle: faultClaimIdle})
	w2 := startWorker(t, workerSpec{Service: service, Replica: "r2", Redis: srv.URL, ClaimIdle: faultClaimIdle})
	cb, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	c, err := client.New(cb, client.Config{Logger: bustest.Quiet, Breaker: client.BreakerConfig{Disabled: true}, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var mu sync.Mutex
	acked := map[string]bool{}
	var before, during, after atomic.Int64
	phase := atomic.Int32{} // 0 before, 1 outage, 2 after
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				key := "k" + strconv.FormatInt(seq.Add(1), 10)
				err := c.Send(context.Background(), service+".record", SleepIn{Ms: 1, Key: key})
				if err != nil {
					if fnmesh.CodeOf(err) != fnmesh.CodeUnavailable && fnmesh.CodeOf(err) != fnmesh.CodeDeadlineExceeded {
						t.Errorf("send during restart: %v", err)
					}
					time.Sleep(20 * time.Millisecond) // a caller backing off
					continue
				}
				mu.Lock()
				acked[key] = true
				mu.Unlock()
				switch phase.Load() {
				case 0:
					before.Add(1)
				case 1:
					during.Add(1)
				default:
					after.Add(1)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // load before the restart
	phase.Store(1)
	srv.Kill()
	time.Sleep(time.Second) // Redis stays down a second
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	phase.Store(2)
	time.Sleep(2 * time.Second) // load after the restart
	close(stop)
	wg.Wait()
	t.Logf("sends acknowledged: %d before the restart, %d while Redis was down or starting, %d after", before.Load(), during.Load(), after.Load())
	if after.Load() == 0 {
		t.Fatal("no send succeeded after Redis came back: the client did not recover")
	}
	rdb := rdbFor(t, srv.URL)
	mu.Lock()
	want := len(acked)
	mu.Unlock()
	waitHLen(t, rdb, "runs:"+service, int64(want), 60*time.Second)
	runs := runCounts(t, rdb, "runs:"+service)
	mu.Lock()
	lost := 0
	for k := range acked {
		if runs[k] == 0 {
			lost++
		}
	}
	mu.Unlock()
	if lost > 0 {
		t.Fatalf("%d acknowledged sends never ran", lost)
	}
	for _, w := range []*worker{w1, w2} {
		if w.exited() {
			t.Fatalf("replica %s exited during the restart: %v", w.spec.Replica, w.wait(0))
		}
	}
	var by string
	if err := c.Call(context.Background(), service+".who", struct{}{}, &by, client.WithTimeout(5*time.Second)); err != nil {
		t.Fatalf("call after the restart: %v", err)
	}
}

// A request that kills every replica that runs it ends in the dead-letter
// stream after MaxDeliveries, the replicas restarted meanwhile keep
// serving, and once the bug is fixed a replay runs it.
func TestPoisonRequestIsDeadLetteredAndReplayed(t *testing.T) {
	t.Parallel()
	service := bustest.Name("poison")
	crash := filepath.Join(t.TempDir(), "crash")
	if err := os.WriteFile(crash, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const maxDeliveries = 3
	spec := func(i int) workerSpec {
		return workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), ClaimIdle: faultClaimIdle, MaxDeliveries: maxDeliveries, CrashFile: crash}
	}
	workers := []*worker{startWorker(t, spec(0)), startWorker(t, spec(1))}
	b := newRedisBus(t, busConfig())
	defer b.Close()
	c := newClient(t, client.Config{})
	if err := c.Send(context.Background(), service+".crash", SleepIn{Key: "poison"}); err != nil {
		t.Fatal(err)
	}
	crashes := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		dls, _ := b.DeadLetters(context.Background(), service, 10)
		if len(dls) == 1 {
			d := dls[0]
			t.Logf("dead-lettered after %d crashes: code %s, attempts %d, reason %q", crashes, d.Code, d.Attempts, d.Reason)
			// Deliveries are bounded by MaxDeliveries; on a starved
			// machine one more delivery can be counted (a take-over racing
			// a restart), never more.
			if d.Code != fnmesh.CodeInternal || !strings.Contains(d.Reason, "delivered") || d.Attempts < maxDeliveries || d.Attempts > maxDeliveries+1 {
				t.Fatalf("dead letter %+v, want attempts %d (or %d)", d, maxDeliveries, maxDeliveries+1)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not dead-lettered after %d crashes", crashes)
		}
		// A supervisor: restart replicas that died. A restarted replica
		// may die before it is ready: it first finishes its own pending
		// entries, the poison among them.
		for i, w := range workers {
			if w.exited() {
				crashes++
				workers[i] = spawnWorker(t, spec(i))
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if crashes < maxDeliveries-1 || crashes > maxDeliveries+1 {
		t.Errorf("%d crashes, want about %d (one per delivery)", crashes, maxDeliveries)
	}
	// The replicas serve other requests.
	var by string
	if err := c.Call(context.Background(), service+".who", struct{}{}, &by); err != nil {
		t.Fatalf("replicas do not serve after the poison: %v", err)
	}
	t.Logf("poison handled after %v", time.Since(deadline.Add(-60*time.Second)))
	// Fixed: replay runs it.
	os.Remove(crash)
	replayStart := time.Now()
	defer func() { t.Logf("replay ran after %v", time.Since(replayStart)) }()
	if n, err := b.ReplayDeadLetters(context.Background(), service); err != nil || n != 1 {
		t.Fatalf("replay: %d %v", n, err)
	}
	rdb := rdbFor(t, redisURL)
	waitHLen(t, rdb, "runs:"+service, 1, 20*time.Second)
	if dls, _ := b.DeadLetters(context.Background(), service, 10); len(dls) != 0 {
		t.Fatalf("dead letters after replay: %d", len(dls))
	}
}

// SIGTERM to a replica under load: it stops taking requests, finishes the
// running ones and exits 0; the others take the rest; nothing is lost.
func TestSIGTERMDuringLoadLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 3000
	service := bustest.Name("sigterm")
	w1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Concurrency: 16, Drain: 5 * time.Second, ClaimIdle: faultClaimIdle})
	startWorker(t, workerSpec{Service: service, Replica: "r2", Concurrency: 16, ClaimIdle: faultClaimIdle})
	rdb := rdbFor(t, redisURL)
	c := newClient(t, client.Config{})
	produced := make(chan int64, 1)
	go func() { produced <- sendAllKeys(t, c, service, n, n, nil) }()
	waitHLen(t, rdb, "runs:"+service, n/5, 60*time.Second)
	start := time.Now()
	if err := w1.terminate(15 * time.Second); err != nil {
		t.Fatalf("replica did not exit cleanly on SIGTERM: %v", err)
	}
	drain := time.Since(start)
	var reported string
	for _, l := range w1.output() {
		if strings.HasPrefix(l, "stopped") {
			reported = l
		}
	}
	if acc := <-produced; acc != n {
		t.Fatalf("%d of %d sends accepted", acc, n)
	}
	waitHLen(t, rdb, "runs:"+service, n, 60*time.Second)
	runs := runCounts(t, rdb, "runs:"+service)
	twice := 0
	for _, k := range runs {
		if k > 1 {
			twice++
		}
	}
	t.Logf("SIGTERM under load: exited after %v (%s); %d of %d sends ran, %d more than once", drain.Round(time.Millisecond), reported, len(runs), n, twice)
	if twice > 0 {
		t.Errorf("%d requests ran twice after a graceful stop", twice)
	}
	if reported == "" {
		t.Error("the replica did not report its drain")
	}
}
