package integration

import (
	"context"
	"encoding/json"
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
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
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
	meshtest.Eventually(t, d, fmt.Sprintf("%s did not reach %d keys", hash, n), func() bool {
		return rdb.HLen(context.Background(), hash).Val() >= n
	})
}

// pendingOf returns the entries consumer holds, taken and not acked, on
// service's request stream (XPENDING), by entry id, each with the key its
// request records (SleepIn.Key).
func pendingOf(t *testing.T, rdb *redis.Client, service, consumer string) map[string]string {
	t.Helper()
	ctx := context.Background()
	stream := bus.RequestTopic(service)
	ps, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: bus.Group, Start: "-", End: "+", Count: 100000, Consumer: consumer}).Result()
	if err != nil {
		t.Fatalf("XPENDING %s %s: %v", stream, consumer, err)
	}
	out := make(map[string]string, len(ps))
	for _, p := range ps {
		xs, err := rdb.XRangeN(ctx, stream, p.ID, p.ID, 1).Result()
		if err != nil {
			t.Fatalf("XRANGE %s %s: %v", stream, p.ID, err)
		}
		var in SleepIn
		if len(xs) == 1 {
			if raw, ok := xs[0].Values[bus.FieldPayload].(string); ok {
				if err := json.Unmarshal([]byte(raw), &in); err != nil {
					t.Fatalf("entry %s: payload %q: %v", p.ID, raw, err)
				}
			}
		}
		out[p.ID] = in.Key
	}
	return out
}

// pendingCount is how many entries consumer holds on service's request
// stream.
func pendingCount(rdb *redis.Client, service, consumer string) int64 {
	p, err := rdb.XPending(context.Background(), bus.RequestTopic(service), bus.Group).Result()
	if err != nil {
		return 0
	}
	return p.Consumers[consumer]
}

// waitHolding waits until consumer holds at least n entries: the signal
// that a replica about to be killed holds work.
func waitHolding(t *testing.T, rdb *redis.Client, service, consumer string, n int64) {
	t.Helper()
	meshtest.Eventually(t, 60*time.Second, fmt.Sprintf("replica %s never held %d requests", consumer, n), func() bool {
		return pendingCount(rdb, service, consumer) >= n
	})
}

// heldKeys is the set of keys of entries.
func heldKeys(entries map[string]string) map[string]bool {
	keys := make(map[string]bool, len(entries))
	for _, k := range entries {
		keys[k] = true
	}
	return keys
}

// A replica killed (SIGKILL) while it holds requests, and not restarted:
// the surviving replicas take its requests over once they have been idle
// for ClaimIdle (XAUTOCLAIM), and every accepted send runs.
func TestKilledReplicaWorkIsTakenOver(t *testing.T) {
	t.Parallel()
	const n, conc = 200, 8
	service := meshtest.Name("takeover")
	rdb := rdbFor(t, redisURL)
	var workers []*worker
	for i := 0; i < 3; i++ {
		workers = append(workers, startWorker(t, workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), Concurrency: conc, ClaimIdle: faultClaimIdle}))
	}
	c := newClient(t, client.Config{})
	if acc := sendAll(t, c, service, n, 16, 300, nil); acc != n {
		t.Fatalf("%d of %d sends accepted", acc, n)
	}
	waitHolding(t, rdb, service, "r1", 2)
	workers[1].kill()
	killedAt := time.Now()
	held := pendingOf(t, rdb, service, "r1") // the process is gone: exactly what it held
	if len(held) == 0 || len(held) > conc {
		t.Fatalf("the killed replica held %d requests, want 1 to its Concurrency %d", len(held), conc)
	}
	keys := heldKeys(held)
	meshtest.Eventually(t, 60*time.Second, "the killed replica's requests were not taken over", func() bool {
		runs := runCounts(t, rdb, "runs:"+service)
		for k := range keys {
			if runs[k] == 0 {
				return false
			}
		}
		return true
	})
	took := time.Since(killedAt)
	waitHLen(t, rdb, "runs:"+service, n, 60*time.Second)
	runs := runCounts(t, rdb, "runs:"+service)
	for i := 0; i < n; i++ {
		if runs["k"+strconv.Itoa(i)] == 0 {
			t.Fatalf("k%d never ran", i)
		}
	}
	for k, r := range runs {
		if r > 1 && !keys[k] {
			t.Errorf("%s ran %d times and the killed replica did not hold it", k, r)
		}
	}
	if left := pendingCount(rdb, service, "r1"); left != 0 {
		t.Errorf("the killed replica still holds %d entries after they all ran", left)
	}
	if took < faultClaimIdle/2 {
		// Leases are renewed every ClaimIdle/3: an entry is idle for at
		// least two thirds of ClaimIdle after its replica dies.
		t.Errorf("held requests ran %v after the kill, before they could be idle for ClaimIdle %v", took, faultClaimIdle)
	}
	t.Logf("killed a replica holding %d requests; the survivors ran them all %v later (ClaimIdle %v); %d sends ran", len(held), took.Round(time.Millisecond), faultClaimIdle, len(runs))
}

// 10,000 sends while one of three replica processes is killed with
// SIGKILL and replaced by one under a new name: every send runs at least
// once; a request runs twice only if the killed replica held it, and that
// is at most its Concurrency. Then the same with idempotency keys, every
// key sent twice (a caller retrying): the second sends are not run.
func TestKillReplicaDuringSends(t *testing.T) {
	t.Parallel()
	const n, conc = 10000, 16
	rdb := rdbFor(t, redisURL)
	for _, keyed := range []bool{false, true} {
		service := meshtest.Name("kill")
		spec := func(name string) workerSpec {
			// A longer claim idle than the take-over tests: this test counts
			// the runs the kill repeats, and race-built replicas on a
			// starved machine can stall past a short one and lose leases.
			return workerSpec{Service: service, Replica: name, Concurrency: conc, ClaimIdle: 2 * faultClaimIdle}
		}
		workers := []*worker{startWorker(t, spec("r0")), startWorker(t, spec("r1")), startWorker(t, spec("r2"))}
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
		waitHolding(t, rdb, service, "r1", 1)
		workers[1].kill()
		held := pendingOf(t, rdb, service, "r1")
		killedAt := rdb.HLen(context.Background(), "runs:"+service).Val()
		if len(held) == 0 || len(held) > conc {
			t.Fatalf("the killed replica held %d requests, want 1 to its Concurrency %d", len(held), conc)
		}
		workers[1] = startWorker(t, spec("r1-replaced"))
		if acc := <-produced; acc != int64(sends) {
			t.Fatalf("only %d of %d sends accepted", acc, sends)
		}
		waitHLen(t, rdb, "runs:"+service, n, 90*time.Second)
		keys := heldKeys(held)
		meshtest.Eventually(t, 60*time.Second, "the killed replica's entries were not taken over", func() bool {
			return pendingCount(rdb, service, "r1") == 0
		})
		runs := runCounts(t, rdb, "runs:"+service)
		twice, total := 0, 0
		var notHeld []string
		for i := 0; i < n; i++ {
			k := "k" + strconv.Itoa(i)
			r := runs[k]
			if r == 0 {
				t.Fatalf("%s never ran", k)
			}
			total += r
			if r > 1 {
				twice++
				if !keys[k] {
					notHeld = append(notHeld, k)
				}
			}
		}
		if len(notHeld) > 0 {
			t.Errorf("%d keys ran more than once and the killed replica did not hold them: %v", len(notHeld), notHeld[:min(len(notHeld), 5)])
		}
		label := "without idempotency keys"
		if keyed {
			label = "with idempotency keys, each sent twice"
		}
		t.Logf("%s: %d sends, %d keys ran, %d ran more than once, %d runs in all; killed after %d of %d keys, holding %d",
			label, sends, len(runs), twice, total, killedAt, n, len(held))
		if total > n+len(held) {
			t.Errorf("%d runs for %d keys: more repeats than the %d requests the killed replica held", total, n, len(held))
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

// Calls in flight when a replica that holds some of them is killed: every
// call is answered, the killed replica's by the others once its entries
// are idle for ClaimIdle, well within the calls' deadline.
func TestCallsInFlightAtKill(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("inflight")
	rdb := rdbFor(t, redisURL)
	var workers []*worker
	for i := 0; i < 3; i++ {
		workers = append(workers, startWorker(t, workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), Concurrency: 16, ClaimIdle: faultClaimIdle}))
	}
	c := newClient(t, client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	const calls = 48
	// Long enough that the killed replica cannot finish one before the
	// kill even on a starved machine; short enough that a taken-over call
	// (ClaimIdle, then 1 s) ends far inside its deadline.
	const runFor, timeout = time.Second, 20 * time.Second
	type outcome struct {
		by   string
		err  error
		took time.Duration
	}
	results := make(chan outcome, calls)
	for i := 0; i < calls; i++ {
		go func() {
			start := time.Now()
			var by string
			err := c.Call(context.Background(), service+".sleep", SleepIn{Ms: int(runFor / time.Millisecond)}, &by, client.WithTimeout(timeout))
			results <- outcome{by, err, time.Since(start)}
		}()
	}
	waitHolding(t, rdb, service, "r0", 1)
	workers[0].kill()
	held := len(pendingOf(t, rdb, service, "r0"))
	answered := map[string]int{}
	var failed []error
	var slowest time.Duration
	for i := 0; i < calls; i++ {
		select {
		case o := <-results:
			slowest = max(slowest, o.took)
			if o.err != nil {
				failed = append(failed, o.err)
			} else {
				answered[o.by]++
			}
		case <-time.After(timeout + 5*time.Second):
			t.Fatalf("%d calls still hang after their deadline", calls-i)
		}
	}
	t.Logf("%d calls in flight, %d held by the killed replica: answered by %v, %d failed, slowest %v", calls, held, answered, len(failed), slowest.Round(time.Millisecond))
	if held == 0 {
		t.Fatal("the killed replica held no call")
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls failed, first: %v", len(failed), calls, failed[0])
	}
	if survivors := answered["r1"] + answered["r2"]; survivors < held {
		t.Fatalf("the other replicas answered %d calls, fewer than the %d the killed replica held", survivors, held)
	}
}

// A request that runs for three times ClaimIdle on a live replica, while
// another replica looks for idle entries to take: the slow replica renews
// its lease, so the request runs once.
func TestSlowRequestKeepsItsLease(t *testing.T) {
	t.Parallel()
	const claimIdle = faultClaimIdle
	const n = 4
	service := meshtest.Name("lease")
	rdb := rdbFor(t, redisURL)
	r1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Concurrency: n, ClaimIdle: claimIdle})
	c := newClient(t, client.Config{})
	for i := 0; i < n; i++ {
		if err := c.Send(context.Background(), service+".record", SleepIn{Ms: int(3*claimIdle/time.Millisecond) + 500, Key: "slow" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitHolding(t, rdb, service, "r1", n)
	// The other replica starts once r1 runs them all: it claims any entry
	// idle for ClaimIdle, every second, for the whole run.
	r2 := startWorker(t, workerSpec{Service: service, Replica: "r2", Concurrency: n, ClaimIdle: claimIdle})
	// Until they have run, none may pass to r2 (which would run it again).
	taken := int64(0)
	meshtest.Eventually(t, 60*time.Second, "the slow requests did not finish", func() bool {
		taken = max(taken, pendingCount(rdb, service, "r2"))
		return rdb.HLen(context.Background(), "runs:"+service).Val() >= n
	})
	runs := runCounts(t, rdb, "runs:"+service)
	t.Logf("%d requests of %v each (ClaimIdle %v), with another replica live: runs %v, taken by the other %d", n, 3*claimIdle+500*time.Millisecond, claimIdle, runs, taken)
	if taken > 0 {
		t.Errorf("the other replica took %d requests from the live one: their leases were not renewed", taken)
	}
	for k, r := range runs {
		if r != 1 {
			t.Errorf("%s ran %d times, want once: its live replica lost its lease", k, r)
		}
	}
	if r1.exited() || r2.exited() {
		t.Fatal("a replica exited")
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
	service := meshtest.Name("restart")
	w1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Redis: srv.URL, ClaimIdle: faultClaimIdle})
	w2 := startWorker(t, workerSpec{Service: service, Replica: "r2", Redis: srv.URL, ClaimIdle: faultClaimIdle})
	cb, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet, Breaker: client.BreakerConfig{Disabled: true}, Timeout: 3 * time.Second})
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
	// The hash also holds sends stored whose acknowledgement the client
	// lost with the connection, so its length is no proof: wait for every
	// acknowledged key (some retry with backoff across the outage).
	lost := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		runs := runCounts(t, rdb, "runs:"+service)
		lost = 0
		mu.Lock()
		for k := range acked {
			if runs[k] == 0 {
				lost++
			}
		}
		mu.Unlock()
		if lost == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling Redis: no signal for a run
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged sends never ran within 60s", lost)
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

// A call whose request kills every replica that runs it: it runs at most
// MaxDeliveries times, then the waiting caller gets internal and the
// request is in the dead-letter stream; the replicas restarted meanwhile
// keep serving, and once the bug is fixed a replay runs it.
func TestPoisonRequestIsDeadLetteredAndReplayed(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("poison")
	crash := filepath.Join(t.TempDir(), "crash")
	if err := os.WriteFile(crash, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const maxDeliveries = 3
	spec := func(i int) workerSpec {
		return workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i), ClaimIdle: faultClaimIdle, MaxDeliveries: maxDeliveries, CrashFile: crash}
	}
	// A supervisor: a replica that dies is started again under its name.
	died := make(chan int, 16)
	watch := func(i int, w *worker) {
		go func() { w.wait(time.Hour); died <- i }()
	}
	workers := []*worker{startWorker(t, spec(0)), startWorker(t, spec(1))}
	for i, w := range workers {
		watch(i, w)
	}
	b := newRedisBus(t, busConfig())
	defer b.Close()
	c := newClient(t, client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	start := time.Now()
	called := make(chan error, 1)
	go func() {
		called <- c.Call(context.Background(), service+".crash", SleepIn{Key: "poison"}, nil, client.WithTimeout(3*time.Minute))
	}()
	restarts := 0
	var callErr error
	for waiting := true; waiting; {
		select {
		case callErr = <-called:
			waiting = false
		case i := <-died:
			restarts++
			// A restarted replica may die before it is ready: it first
			// finishes its own pending entries, the poison among them.
			workers[i] = spawnWorker(t, spec(i))
			watch(i, workers[i])
		case <-time.After(3 * time.Minute):
			t.Fatalf("the call is still waiting after %d restarts", restarts)
		}
	}
	rdb := rdbFor(t, redisURL)
	runs, err := rdb.HGet(context.Background(), "crashes:"+service, "poison").Int()
	if err != nil {
		t.Fatalf("runs of the poison: %v", err)
	}
	t.Logf("poison: %d runs, %d replica restarts, the call ended after %v: %v", runs, restarts, time.Since(start).Round(time.Millisecond), callErr)
	meshtest.WantCode(t, callErr, fnmesh.CodeInternal)
	if runs < 1 || runs > maxDeliveries {
		t.Fatalf("the poison ran %d times, want at most MaxDeliveries %d", runs, maxDeliveries)
	}
	// The caller is answered first, then the dead letter is recorded.
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 10*time.Second, "the poison is not in the dead letters", func() bool {
		dls, err = b.DeadLetters(context.Background(), service, 10)
		if err != nil {
			t.Fatalf("reading the dead letters: %v", err)
		}
		return len(dls) > 0
	})
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	d := dls[0]
	if d.Code != fnmesh.CodeInternal || !strings.Contains(d.Reason, "delivered") || d.Attempts < runs || d.Attempts > maxDeliveries {
		t.Fatalf("dead letter %+v, want code internal, attempts %d to %d", d, runs, maxDeliveries)
	}
	// The replicas serve other requests.
	var by string
	if err := c.Call(context.Background(), service+".who", struct{}{}, &by); err != nil {
		t.Fatalf("replicas do not serve after the poison: %v", err)
	}
	// Fixed: replay runs it.
	if err := os.Remove(crash); err != nil {
		t.Fatal(err)
	}
	if n, err := b.ReplayDeadLetters(context.Background(), service); err != nil || n != 1 {
		t.Fatalf("replay: %d %v", n, err)
	}
	waitHLen(t, rdb, "runs:"+service, 1, 20*time.Second)
	dls, err = b.DeadLetters(context.Background(), service, 10)
	if err != nil {
		t.Fatalf("reading the dead letters after the replay: %v", err)
	}
	if len(dls) != 0 {
		t.Fatalf("dead letters after replay: %d", len(dls))
	}
}

// handBackBound is how soon another replica must take requests a stopping
// replica handed back: its next claim, at most ClaimInterval (1 s) later,
// plus room for a loaded machine; without the hand-back they would wait
// for handBackClaimIdle.
const handBackBound = 2 * time.Second

const handBackClaimIdle = 20 * time.Second

// SIGTERM to a replica running requests that outlast its drain timeout:
// it hands them back as it stops, and another replica takes them at its
// next claim (within about a second, not after ClaimIdle) and runs each
// once to its end.
func TestSIGTERMHandsBackUnfinishedRequests(t *testing.T) {
	t.Parallel()
	const n = 4
	service := meshtest.Name("handback")
	rdb := rdbFor(t, redisURL)
	r1 := startWorker(t, workerSpec{Service: service, Replica: "r1", Concurrency: n, Drain: 300 * time.Millisecond, ClaimIdle: handBackClaimIdle})
	c := newClient(t, client.Config{})
	for i := 0; i < n; i++ {
		if err := c.Send(context.Background(), service+".record", SleepIn{Ms: 8000, Key: "long" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitHolding(t, rdb, service, "r1", n)
	// Started once r1 runs them all, so only a hand-back gives them to r2.
	startWorker(t, workerSpec{Service: service, Replica: "r2", Concurrency: n, ClaimIdle: handBackClaimIdle})
	if err := r1.terminate(30 * time.Second); err != nil {
		t.Fatalf("replica did not exit cleanly on SIGTERM: %v", err)
	}
	stoppedAt, ok := r1.lineAt("stopped")
	if !ok {
		t.Fatal("the replica did not report its stop")
	}
	var takenAt time.Time
	for takenAt.IsZero() {
		if pendingCount(rdb, service, "r2") >= n {
			takenAt = time.Now()
			break
		}
		if time.Since(stoppedAt) > handBackClaimIdle+10*time.Second {
			t.Fatalf("the other replica holds %d of the %d handed-back requests", pendingCount(rdb, service, "r2"), n)
		}
		time.Sleep(10 * time.Millisecond) // polling Redis: XPENDING has no signal
	}
	took := takenAt.Sub(stoppedAt)
	waitHLen(t, rdb, "runs:"+service, n, 30*time.Second)
	runs := runCounts(t, rdb, "runs:"+service)
	t.Logf("%d requests handed back on SIGTERM; the other replica took them %v after the stop, runs %v", n, took.Round(time.Millisecond), runs)
	if took > handBackBound {
		t.Errorf("handed-back requests were taken %v after the stop, want within %v", took, handBackBound)
	}
	for k, r := range runs {
		if r != 1 {
			t.Errorf("%s ran %d times to its end, want once", k, r)
		}
	}
}

// SIGTERM to a replica under load: it stops taking requests, finishes the
// running ones and exits 0; the others take the rest; nothing is lost.
func TestSIGTERMDuringLoadLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 3000
	service := meshtest.Name("sigterm")
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
