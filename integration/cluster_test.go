package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/demo"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// The tests here run against a real Redis Cluster: 3 masters and 3
// replicas, redis-server processes on free loopback ports, created with
// redis-cli --cluster create (internal/redistest/cluster.go).

func sharedCluster(t testing.TB) *redistest.Cluster {
	t.Helper()
	c, err := redistest.SharedCluster()
	if err != nil {
		t.Fatalf("no Redis Cluster for the tests: %v", err)
	}
	return c
}

// busAt returns a bus on url, closed when the test ends.
func busAt(t testing.TB, url string, cfg bus.RedisConfig) *bus.Redis {
	t.Helper()
	cfg.URL = url
	b, err := bus.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// The behaviour suite, on a Redis Cluster: every bus is a ClusterClient.
func TestClusterBehaviour(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	meshtest.Run(t, func(t *testing.T) bus.Bus {
		b := busAt(t, c.URL, bus.RedisConfig{})
		if _, ok := b.Client().(*redis.ClusterClient); !ok {
			t.Fatalf("bus on %s uses %T, want *redis.ClusterClient", c.URL, b.Client())
		}
		return b
	})
}

// Services land on different shards: each service's request stream and
// dead-letter stream live on the master that owns the slot of its hash
// tag, and on no other; callers' inboxes spread over shards too, and
// replies reach them wherever they are.
func TestClusterServicesSpreadOverShards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cl := sharedCluster(t)
	states, err := cl.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var masters []string
	for _, st := range states {
		if st.Master {
			masters = append(masters, st.Addr)
		}
	}
	sort.Strings(masters)
	if len(masters) != 3 {
		t.Fatalf("masters %v, want 3", masters)
	}

	// One service per master: draw names until every master has one.
	byMaster := map[string]string{}
	for i := 0; len(byMaster) < len(masters); i++ {
		if i == 300 {
			t.Fatalf("300 service names landed on %d masters only: %v", len(byMaster), byMaster)
		}
		name := meshtest.Name("shard")
		m, _, err := cl.Owner(ctx, bus.RequestTopic(name))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := byMaster[m]; !ok {
			byMaster[m] = name
		}
	}

	b := busAt(t, cl.URL, bus.RedisConfig{})
	h := &meshtest.Harness{T: t, Bus: b}
	for _, name := range byMaster {
		svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
		handlers.Register(svc, "echo", func(_ context.Context, s string) (string, error) { return name + ":" + s, nil })
		h.Start(svc)
	}

	// Clients until their inboxes sit on at least two masters.
	inboxMasters := map[string]bool{}
	var clients []*client.Client
	for i := 0; len(inboxMasters) < 2; i++ {
		if i == 40 {
			t.Fatalf("40 inboxes all on %v", inboxMasters)
		}
		c := h.Client(client.Config{})
		m, _, err := cl.Owner(ctx, c.Inbox())
		if err != nil {
			t.Fatal(err)
		}
		inboxMasters[m] = true
		clients = append(clients, c)
	}

	for _, c := range clients {
		for _, name := range byMaster {
			var out string
			if err := c.Call(ctx, name+".echo", "hi", &out); err != nil || out != name+":hi" {
				t.Fatalf("call %s.echo from inbox %s: %q, %v", name, c.Inbox(), out, err)
			}
		}
		// The inbox lives on its slot's master only.
		m, _, _ := cl.Owner(ctx, c.Inbox())
		assertOnlyOn(t, cl, masters, c.Inbox(), m)
	}
	// A send to a function that does not exist is dead-lettered at once,
	// on the service's own shard (sent past the client's registry check,
	// which would refuse it before Redis).
	raw := h.Client(client.Config{SkipRegistryCheck: true})
	for _, name := range byMaster {
		if err := raw.Send(ctx, name+".nosuch", "x"); err != nil {
			t.Fatal(err)
		}
	}
	for m, name := range byMaster {
		meshtest.Eventually(t, 10*time.Second, "dead letter of "+name, func() bool {
			return cl.Node(m).Exists(ctx, bus.DeadLetterTopic(name)).Val() == 1
		})
		slot, _ := cl.Slot(ctx, bus.RequestTopic(name))
		dslot, _ := cl.Slot(ctx, bus.DeadLetterTopic(name))
		if slot != dslot {
			t.Errorf("%s: request stream in slot %d, dead letters in slot %d", name, slot, dslot)
		}
		assertOnlyOn(t, cl, masters, bus.RequestTopic(name), m)
		assertOnlyOn(t, cl, masters, bus.DeadLetterTopic(name), m)
		groups, err := cl.Node(m).XInfoGroups(ctx, bus.RequestTopic(name)).Result()
		if err != nil || len(groups) != 1 || groups[0].Name != bus.Group || groups[0].Consumers != 1 {
			t.Errorf("%s on %s: groups %+v, %v; want one group %q with one consumer", name, m, groups, err, bus.Group)
		}
		t.Logf("service %-16s slot %5d  master %s", name, slot, m)
	}
	t.Logf("%d inboxes on masters %v", len(clients), keys(inboxMasters))
}

// assertOnlyOn checks that key exists on master want and on no other.
func assertOnlyOn(t *testing.T, cl *redistest.Cluster, masters []string, key, want string) {
	t.Helper()
	for _, m := range masters {
		// A plain client asks the node itself: a node holds only the keys
		// of its own slots (others answer MOVED, counted as absent).
		n, err := cl.Node(m).Exists(context.Background(), key).Result()
		has := err == nil && n == 1
		if has != (m == want) {
			t.Errorf("%s on %s: exists=%v (%v), want only on %s", key, m, has, err, want)
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// callRecord is one call of a load run.
type callRecord struct {
	start, end time.Time
	err        error
}

// loadRecorded runs conc callers of fn until stop closes and returns
// every call made.
func loadRecorded(c *client.Client, fn string, in any, conc int, timeout time.Duration, stop <-chan struct{}) []callRecord {
	var mu sync.Mutex
	var all []callRecord
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := callRecord{start: time.Now()}
				var out json.RawMessage
				r.err = c.Call(context.Background(), fn, in, &out, client.WithTimeout(timeout))
				r.end = time.Now()
				mu.Lock()
				all = append(all, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return all
}

// window is a stretch of time in which the cluster was being disrupted.
type window struct {
	what       string
	start, end time.Time
}

// disruptUnderLoad starts a cluster of its own, two replica processes of
// a service on it and a caller, runs 16 callers of 2 ms calls (timeout 5
// s), lets disrupt change the cluster, and checks: calls before every
// window succeed; calls overlapping one succeed or fail within their
// deadline with deadline_exceeded or unavailable; calls begun settle
// after the last window succeed, and so does a burst of 200 fresh calls.
func disruptUnderLoad(t *testing.T, settle time.Duration, disrupt func(cl *redistest.Cluster, service string, c *client.Client) []window) {
	ctx := context.Background()
	cl, err := redistest.StartCluster(redistest.ClusterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	service := meshtest.Name("failover")
	for _, r := range []string{"a", "b"} {
		startWorker(t, workerSpec{Service: service, Replica: r, Redis: cl.URL})
	}
	b := busAt(t, cl.URL, bus.RedisConfig{})
	c, err := client.New(b, client.Config{Logger: meshtest.Quiet, Breaker: client.BreakerConfig{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fn := service + ".sleep"
	if err := c.Call(ctx, fn, SleepIn{Ms: 1}, new(string)); err != nil {
		t.Fatalf("first call: %v", err)
	}

	const timeout = 5 * time.Second
	stop := make(chan struct{})
	done := make(chan []callRecord)
	go func() { done <- loadRecorded(c, fn, SleepIn{Ms: 2}, 16, timeout, stop) }()
	time.Sleep(time.Second) // a stretch of calls before anything happens
	windows := disrupt(cl, service, c)
	last := windows[len(windows)-1].end
	time.Sleep(settle + 2*time.Second) // a stretch of calls after
	close(stop)
	calls := <-done

	// Sort the calls: before the first window, overlapping one, after.
	var before, during, after, late []callRecord
	for _, r := range calls {
		overlaps := false
		for _, w := range windows {
			if r.start.Before(w.end) && r.end.After(w.start) {
				overlaps = true
			}
		}
		switch {
		case overlaps:
			during = append(during, r)
		case r.end.Before(windows[0].start):
			before = append(before, r)
		case r.start.After(last.Add(settle)):
			late = append(late, r)
		default:
			after = append(after, r)
		}
	}
	summary := func(rs []callRecord) string {
		codes := map[fnmesh.Code]int{}
		ok := 0
		var slowest time.Duration
		for _, r := range rs {
			if r.err == nil {
				ok++
			} else {
				codes[fnmesh.CodeOf(r.err)]++
			}
			slowest = max(slowest, r.end.Sub(r.start))
		}
		return fmt.Sprintf("%d calls, %d ok, failed %v, slowest %v", len(rs), ok, codes, slowest.Round(time.Millisecond))
	}
	for _, w := range windows {
		t.Logf("%s took %v", w.what, w.end.Sub(w.start).Round(time.Millisecond))
	}
	t.Logf("before:             %s", summary(before))
	t.Logf("overlapping:        %s", summary(during))
	t.Logf("up to %v after:     %s", settle, summary(after))
	t.Logf("later:              %s", summary(late))

	if len(before) == 0 || len(late) == 0 {
		t.Fatalf("load too thin to judge: %d calls before, %d after", len(before), len(late))
	}
	for _, r := range calls {
		if r.err == nil {
			continue
		}
		var fe *fnmesh.Error
		if !errors.As(r.err, &fe) || (fe.Code != fnmesh.CodeDeadlineExceeded && fe.Code != fnmesh.CodeUnavailable) {
			t.Errorf("a call failed with %v (%T), want deadline_exceeded or unavailable", r.err, r.err)
		}
		if d := r.end.Sub(r.start); d > timeout+500*time.Millisecond {
			t.Errorf("a failed call took %v, past its %v deadline", d, timeout)
		}
	}
	for name, rs := range map[string][]callRecord{"before the disruption": before, "after it settled": late} {
		for _, r := range rs {
			if r.err != nil {
				t.Errorf("a call %s failed: %v", name, r.err)
				break
			}
		}
	}
	// And the service keeps serving: a burst of fresh calls all succeed.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out string
			if err := c.Call(ctx, fn, SleepIn{Ms: 1}, &out, client.WithTimeout(5*time.Second)); err != nil {
				errs <- err
			} else if out != "a" && out != "b" {
				errs <- fmt.Errorf("answered by %q", out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call after the disruption: %v", err)
	}
}

// A master fails over (CLUSTER FAILOVER on its replica) while calls run
// against two replica processes of a service on it; then the master of
// the caller's inbox fails over too (which may be the node just promoted).
func TestClusterFailoverUnderLoad(t *testing.T) {
	t.Parallel()
	// Clients learn the new topology from their first MOVED.
	disruptUnderLoad(t, 2*time.Second, func(cl *redistest.Cluster, service string, c *client.Client) []window {
		ctx := context.Background()
		var windows []window
		failover := func(what, key string) {
			master, replica, err := cl.Owner(ctx, key)
			if err != nil || replica == "" {
				t.Fatalf("owner of %s: %q %q %v", key, master, replica, err)
			}
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			w := window{what: fmt.Sprintf("CLUSTER FAILOVER of the %s (%s -> %s)", what, master, replica), start: time.Now()}
			if err := cl.Failover(fctx, replica); err != nil {
				t.Fatal(err)
			}
			w.end = time.Now()
			windows = append(windows, w)
			if m, _, _ := cl.Owner(ctx, key); m != replica {
				t.Fatalf("after failover %s is on %s, want %s", key, m, replica)
			}
		}
		failover("request stream's master", bus.RequestTopic(service))
		time.Sleep(500 * time.Millisecond)
		// The inbox's master now: maybe the node just promoted, failing back.
		failover("inbox's master", c.Inbox())
		return windows
	})
}

// The master of a service's request stream crashes (SIGKILL) under load;
// its replica takes over once the other masters agree it failed
// (cluster-node-timeout, 2 s here). Calls in between fail within their
// deadline with a clear code; calls after succeed.
func TestClusterMasterCrashUnderLoad(t *testing.T) {
	t.Parallel()
	// A crashed node sends no MOVED: clients re-read the slot map when
	// it stops answering (bus.followTopology), and readers retry with a
	// backoff of up to 2 s, so allow them a few seconds.
	disruptUnderLoad(t, 6*time.Second, func(cl *redistest.Cluster, service string, c *client.Client) []window {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		master, replica, err := cl.Owner(ctx, bus.RequestTopic(service))
		if err != nil || replica == "" {
			t.Fatalf("owner: %q %q %v", master, replica, err)
		}
		w := window{what: fmt.Sprintf("crash of the request stream's master %s until %s took over", master, replica), start: time.Now()}
		cl.Kill(master)
		if err := cl.WaitPromoted(ctx, replica); err != nil {
			t.Fatal(err)
		}
		w.end = time.Now()
		return []window{w}
	})
}

// clusterTotals sums keys and client connections over every node.
func clusterTotals(t *testing.T, cl *redistest.Cluster) (keys int64, conns int) {
	t.Helper()
	ctx := context.Background()
	for _, n := range cl.Nodes {
		k, err := cl.Node(n.Addr).DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		list, err := cl.Node(n.Addr).ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		// Replicas hold every key of their master: count masters' keys.
		if role, _ := cl.Node(n.Addr).Do(ctx, "ROLE").Slice(); len(role) > 0 && role[0] == "master" {
			keys += k
		}
		conns += strings.Count(list, "\n")
	}
	return keys, conns
}

// 3,000 calls on a cluster leave no key, connection or goroutine behind, and
// streams are trimmed. Not parallel: it counts every key and connection
// of the shared cluster, and Go runs parallel tests after this one.
func TestClusterCallsLeaveNothingBehind(t *testing.T) {
	ctx := context.Background()
	cl := sharedCluster(t)
	service := meshtest.Name("leak")
	cfg := bus.RedisConfig{TrimInterval: 100 * time.Millisecond, InboxRefresh: 100 * time.Millisecond}
	sb := busAt(t, cl.URL, cfg)
	h := &meshtest.Harness{T: t, Bus: sb}
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	stopSvc := h.StartStoppable(svc)
	cb := busAt(t, cl.URL, cfg)
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	calls := func(n int) { addCalls(t, c, service+".add", n) }
	calls(500)
	// The replica's statistics reach the registry with its first heartbeat
	// after calls ran: a key made once, not per call.
	meshtest.Eventually(t, 10*time.Second, "no heartbeat with statistics", func() bool {
		return cb.Client().Exists(context.Background(), registry.StatsKey(service)).Val() == 1
	})
	// Two equal batches after the warm-up: what leaks grows with each
	// batch; connections the clients open to more nodes on first use, or
	// that earlier tests are still closing, do not come back.
	keysA, connsA := clusterTotals(t, cl)
	goroutinesA := runtime.NumGoroutine()
	calls(1500)
	keys0, conns0 := clusterTotals(t, cl)
	goroutines0 := runtime.NumGoroutine()
	calls(1500)
	keys, conns := clusterTotals(t, cl)
	goroutines := runtime.NumGoroutine()
	t.Logf("after 500, 2,000 and 3,500 calls: keys %d, %d, %d; goroutines %d, %d, %d; connections %d, %d, %d",
		keysA, keys0, keys, goroutinesA, goroutines0, goroutines, connsA, conns0, conns)
	if keys != keys0 {
		t.Errorf("keys on the cluster's masters grew from %d to %d", keys0, keys)
	}
	if goroutines > goroutines0+5 {
		t.Errorf("goroutines grew from %d to %d", goroutines0, goroutines)
	}
	if conns > conns0+2 {
		t.Errorf("connections grew from %d to %d", conns0, conns)
	}
	req, _, _ := cl.Owner(ctx, bus.RequestTopic(service))
	inbox, _, _ := cl.Owner(ctx, c.Inbox())
	meshtest.Eventually(t, 10*time.Second, "streams not trimmed", func() bool {
		return cl.Node(req).XLen(ctx, bus.RequestTopic(service)).Val() < 500 && cl.Node(inbox).XLen(ctx, c.Inbox()).Val() < 500
	})
	// Stopping the service and closing the client removes the inbox; the
	// request stream stays (it is the service's, with its group).
	c.Close()
	if err := stopSvc(); err != nil {
		t.Fatal(err)
	}
	if n := cl.Node(inbox).Exists(ctx, c.Inbox()).Val(); n != 0 {
		t.Errorf("closed client's inbox still exists")
	}
	cl.Node(req).Del(ctx, bus.RequestTopic(service))
	cb.Close()
	sb.Close()
	meshtest.Eventually(t, 5*time.Second, "connections not released", func() bool {
		_, n := clusterTotals(t, cl)
		return n <= conns0
	})
}

// The slot table in docs/PROTOCOL.md §13 is what the cluster computes,
// and the keys it names are the ones the code builds.
func TestProtocolDocSlotTable(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)<!-- slot table.*?-->(.*?)<!-- end -->").FindSubmatch(doc)
	if block == nil {
		t.Fatal("no slot table in docs/PROTOCOL.md")
	}
	rows := regexp.MustCompile("\\| `([^`]+)` \\| (\\d+) \\|").FindAllSubmatch(block[1], -1)
	if len(rows) < 4 {
		t.Fatalf("slot table has %d rows", len(rows))
	}
	built := map[string]bool{
		bus.RequestTopic("math"): true, bus.DeadLetterTopic("math"): true,
		bus.RequestTopic("mail"): true, bus.ReplyTopic("cli-1"): true,
	}
	cl := sharedCluster(t)
	for _, r := range rows {
		key, want := string(r[1]), string(r[2])
		if !built[key] {
			t.Errorf("doc names key %s, which the code does not build", key)
		}
		slot, err := cl.Slot(context.Background(), key)
		if err != nil || strconv.Itoa(slot) != want {
			t.Errorf("doc says %s is in slot %s; CLUSTER KEYSLOT says %d (%v)", key, want, slot, err)
		}
	}
}

// `fnmesh demo --redis redis+cluster://...`: the README's main command on
// a Redis Cluster. Its services have fixed names (math, mail, legacy),
// which no other cluster test uses.
func TestDemoOverCluster(t *testing.T) {
	t.Parallel()
	cl := sharedCluster(t)
	var out bytes.Buffer
	if err := demo.Run(context.Background(), &out, cl.URL); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range demo.Shows {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}
