package integration

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// tooLargePrefix is bus.TooLargePrefix: what a dead letter keeps.
const tooLargePrefix = 4 << 10

// An entry far above the replica's payload limit is refused from its
// length header: the replica allocates a small fraction of it while the
// entry streams by, dead-letters it as invalid_argument with a bounded
// prefix of the payload, and keeps serving.
func TestOversizedEntryIsNotBuffered(t *testing.T) {
	oversizedEntryIsNotBuffered(t, newRedisBus(t, busConfig()), meshtest.Name("big"), entryMaker(t), false)
}

// So it is when the replica takes the entry over (XAUTOCLAIM) from a
// replica that died holding it.
func TestOversizedTakenOverEntryIsNotBuffered(t *testing.T) {
	oversizedEntryIsNotBuffered(t, newRedisBus(t, bus.RedisConfig{ClaimIdle: 300 * time.Millisecond, ClaimInterval: 50 * time.Millisecond}), meshtest.Name("big"), entryMaker(t), true)
}

// So it is on a Redis Cluster, read new or taken over: the replica reads
// on a connection of its own to the master of its stream's slot.
func TestClusterOversizedEntryIsNotBuffered(t *testing.T) {
	cl := sharedCluster(t)
	for _, takenOver := range []bool{false, true} {
		t.Run(map[bool]string{false: "read", true: "taken-over"}[takenOver], func(t *testing.T) {
			name := meshtest.Name("bigcluster")
			master, _, err := cl.Owner(context.Background(), bus.RequestTopic(name))
			if err != nil {
				t.Fatal(err)
			}
			maker := redis.NewClient(&redis.Options{Addr: master, Protocol: 2, ReadTimeout: 30 * time.Second, MaxRetries: -1})
			t.Cleanup(func() { maker.Close() })
			b := newRedisBus(t, bus.RedisConfig{URL: cl.URL, ClaimIdle: 300 * time.Millisecond, ClaimInterval: 50 * time.Millisecond})
			if _, ok := b.Client().(*redis.ClusterClient); !ok {
				t.Fatalf("bus on %s uses %T, want *redis.ClusterClient", cl.URL, b.Client())
			}
			oversizedEntryIsNotBuffered(t, b, name, maker, takenOver)
		})
	}
}

// entryMaker is a client that writes large entries: Redis may take a
// while to make one (and to send it to a reader), and a timed-out script
// must not run again.
func entryMaker(t *testing.T) redis.Scripter {
	maker := inspector(t)
	maker.Options().ReadTimeout = 30 * time.Second
	maker.Options().MaxRetries = -1
	return maker
}

// oversizedEntryIsNotBuffered runs a replica of service name on b, writes it an entry
// far above its payload limit (taken over: delivered to a consumer that
// never runs it) and checks what the replica allocated and did.
func oversizedEntryIsNotBuffered(t *testing.T, b *bus.Redis, name string, maker redis.Scripter, takenOver bool) {
	ctx := context.Background()
	const size = 64 << 20
	h := meshtest.NewHarness(t, b)
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	c := startAdder(t, h, svc)

	// Redis makes the entry itself (a Lua string.rep): this process never
	// holds it, so what it allocates is the replica's. Taken over: the
	// same script delivers it to a replica that then died.
	var dls []bus.DeadLetter
	n := allocatedBy(func() {
		if err := maker.Eval(ctx, `local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'add', 'p', string.rep('x', tonumber(ARGV[1])))
		if ARGV[2] == '1' then redis.call('XREADGROUP', 'GROUP', 'fnmesh', 'dead', 'COUNT', '1', 'STREAMS', KEYS[1], '>') end
		return id`, []string{bus.RequestTopic(name)}, size, takenOver).Err(); err != nil {
			t.Fatal(err)
		}
		meshtest.Eventually(t, 30*time.Second, "oversized entry not dead-lettered", func() bool {
			var err error
			dls, err = h.Bus.DeadLetters(ctx, name, 10)
			return err == nil && len(dls) == 1
		})
	})
	if n > size/4 {
		t.Errorf("the replica allocated %d MB for a %d MB entry", n>>20, size>>20)
	} else {
		t.Logf("allocated %d KB while a %d MB entry was refused", n>>10, size>>20)
	}
	d := dls[0]
	if d.Code != fnmesh.CodeInvalidArgument || d.Reason != `malformed entry: field "p" of 67108864 bytes exceeds the replica's limit` {
		t.Fatalf("dead letter %s: %q", d.Code, d.Reason)
	}
	if string(d.Payload) != strings.Repeat("x", tooLargePrefix) || d.Fields[bus.FieldTooLarge] != "p 67108864" {
		t.Fatalf("dead letter keeps %d bytes of the payload and too_large %q, want %d and %q", len(d.Payload), d.Fields[bus.FieldTooLarge], tooLargePrefix, "p 67108864")
	}
	var out meshtest.AddOut
	if err := c.Call(ctx, name+".add", meshtest.AddIn{A: 2, B: 2}, &out); err != nil || out.Sum != 4 {
		t.Fatalf("call after the oversized entry: %v %+v", err, out)
	}
}

// startAdder registers meshtest's add on svc, starts svc on h, and returns
// a client that has called it once.
func startAdder(t *testing.T, h *meshtest.Harness, svc *handlers.Service) *client.Client {
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Logger: meshtest.Quiet})
	var out meshtest.AddOut
	if err := c.Call(context.Background(), svc.Name()+".add", meshtest.AddIn{A: 1, B: 1}, &out); err != nil {
		t.Fatal(err)
	}
	return c
}

// allocatedBy returns the bytes this process allocated while f ran, after
// a collection (so that nothing allocated before counts).
func allocatedBy(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// peakRSSKB reads a process's peak resident set size (VmHWM).
func peakRSSKB(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// The same, seen from outside a replica process: its peak RSS, which
// counts every buffer of the process and not only Go's heap, grows by a
// small fraction of an oversized entry it refuses.
func TestOversizedEntryKeepsReplicaRSSBounded(t *testing.T) {
	ctx := context.Background()
	const size = 128 << 20
	name := meshtest.Name("bigproc")
	w := startWorker(t, workerSpec{Service: name, Replica: name + "-1"})
	c := newClient(t, client.Config{Logger: meshtest.Quiet, SkipRegistryCheck: true})
	var who string
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil {
		t.Fatal(err)
	}
	before := peakRSSKB(t, w.cmd.Process.Pid)
	maker := inspector(t)
	maker.Options().ReadTimeout = 30 * time.Second // Redis may be busy sending the entry to the replica
	if err := maker.Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'bigproc-1', 'fn', 'who', 'p', string.rep('x', tonumber(ARGV[1])))`,
		[]string{bus.RequestTopic(name)}, size).Err(); err != nil {
		t.Fatal(err)
	}
	b := newRedisBus(t, busConfig())
	meshtest.Eventually(t, 60*time.Second, "oversized entry not dead-lettered", func() bool {
		dls, err := b.DeadLetters(ctx, name, 10)
		return err == nil && len(dls) == 1 && dls[0].Code == fnmesh.CodeInvalidArgument
	})
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil {
		t.Fatalf("call after the oversized entry: %v", err)
	}
	after := peakRSSKB(t, w.cmd.Process.Pid)
	if grew := (after - before) << 10; grew > size/8 {
		t.Fatalf("replica's peak RSS grew by %d MB (%d -> %d MB) for a %d MB entry", grew>>20, before>>10, after>>10, size>>20)
	} else {
		t.Logf("replica's peak RSS %d -> %d MB while a %d MB entry was refused", before>>10, after>>10, size>>20)
	}
}

// A sender cannot unmark an oversized field: an entry that carries its
// own empty too_large field, with a payload whose first bytes are valid
// JSON, is still refused as too large, never run on the cut prefix.
func TestOversizedEntryCannotHideItsMark(t *testing.T) {
	ctx := context.Background()
	name := meshtest.Name("bigmark")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	var ran atomic.Int32
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		ran.Add(1)
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Logger: meshtest.Quiet})
	if err := c.Call(ctx, name+".add", meshtest.AddIn{A: 1, B: 1}, nil); err != nil {
		t.Fatal(err)
	}
	for _, order := range []string{"mark first", "mark last"} {
		script := `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', ARGV[2], 'fn', 'add', 'too_large', '', 'p', '{"a":1,"b":2}' .. string.rep(' ', tonumber(ARGV[1])))`
		if order == "mark last" {
			script = `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', ARGV[2], 'fn', 'add', 'p', '{"a":1,"b":2}' .. string.rep(' ', tonumber(ARGV[1])), 'too_large', '')`
		}
		if err := inspector(t).Eval(ctx, script, []string{bus.RequestTopic(name)}, 4<<20, order).Err(); err != nil {
			t.Fatal(err)
		}
	}
	meshtest.Eventually(t, 30*time.Second, "entries with a sender's too_large not both dead-lettered", func() bool {
		dls, err := h.Bus.DeadLetters(ctx, name, 10)
		return err == nil && len(dls) == 2
	})
	dls, _ := h.Bus.DeadLetters(ctx, name, 10)
	for _, d := range dls {
		if d.Code != fnmesh.CodeInvalidArgument || !strings.Contains(d.Reason, `"p"`) {
			t.Fatalf("dead letter %s: %q", d.Code, d.Reason)
		}
	}
	if n := ran.Load(); n != 1 {
		t.Fatalf("the function ran %d times, want once (the plain call)", n)
	}
}

// A reply with a field above the caller's MaxReplyBytes fails its call
// with resource_exhausted, read from the field's length header: the
// caller allocates a small fraction of it, and keeps serving its other
// calls.
func TestCallerRefusesOversizedReply(t *testing.T) {
	ctx := context.Background()
	const size = 64 << 20
	name := meshtest.Name("bigreply")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	release := make(chan struct{})
	defer close(release) // before the harness stops the replica (a cleanup)
	handlers.Register(svc, "wait", func(ctx context.Context, _ struct{}) (struct{}, error) {
		select {
		case <-ctx.Done():
		case <-release:
		}
		return struct{}{}, nil
	})
	c := startAdder(t, h, svc)

	const id = "big-reply-1"
	var callErr error
	n := allocatedBy(func() {
		failed := make(chan error, 1)
		go func() {
			failed <- c.Call(ctx, name+".wait", struct{}{}, nil, client.WithRequestID(id), client.WithTimeout(60*time.Second))
		}()
		meshtest.Eventually(t, 30*time.Second, "the replica did not take the call", func() bool {
			p, err := inspector(t).XPending(ctx, bus.RequestTopic(name), bus.Group).Result()
			return err == nil && p.Count == 1
		})
		// Redis makes the reply itself (a Lua string.rep): this process
		// never holds it, so what it allocates is the caller's.
		if err := entryMaker(t).Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'by', 'the test', 'p', string.rep('x', tonumber(ARGV[2])))`,
			[]string{c.Inbox()}, id, size).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case callErr = <-failed:
		case <-time.After(60 * time.Second):
			t.Fatal("the call got no answer")
		}
	})
	if fnmesh.CodeOf(callErr) != fnmesh.CodeResourceExhausted || !strings.Contains(callErr.Error(), "MaxReplyBytes") {
		t.Fatalf("call answered with a %d MB reply: %v, want resource_exhausted naming MaxReplyBytes", size>>20, callErr)
	}
	if n > size/4 {
		t.Fatalf("allocated %d MB while a %d MB reply was refused", n>>20, size>>20)
	} else {
		t.Logf("allocated %d KB while a %d MB reply was refused", n>>10, size>>20)
	}
	var out meshtest.AddOut
	if err := c.Call(ctx, name+".add", meshtest.AddIn{A: 2, B: 2}, &out); err != nil || out.Sum != 4 {
		t.Fatalf("after the refused reply: %+v %v", out, err)
	}
}
