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
	ctx := context.Background()
	const size = 64 << 20
	name := meshtest.Name("big")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Logger: meshtest.Quiet})
	var out meshtest.AddOut
	if err := c.Call(ctx, name+".add", meshtest.AddIn{A: 1, B: 1}, &out); err != nil {
		t.Fatal(err)
	}

	// Redis makes the entry itself (a Lua string.rep): this process never
	// holds it, so what it allocates is the replica's.
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := inspector(t).Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'add', 'p', string.rep('x', tonumber(ARGV[1])))`,
		[]string{bus.RequestTopic(name)}, size).Err(); err != nil {
		t.Fatal(err)
	}
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 30*time.Second, "oversized entry not dead-lettered", func() bool {
		var err error
		dls, err = h.Bus.DeadLetters(ctx, name, 10)
		return err == nil && len(dls) == 1
	})
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > size/4 {
		t.Fatalf("the replica allocated %d MB for a %d MB entry", n>>20, size>>20)
	} else {
		t.Logf("allocated %d KB while a %d MB entry was refused", n>>10, size>>20)
	}
	d := dls[0]
	if d.Code != fnmesh.CodeInvalidArgument || !strings.Contains(d.Reason, `"p"`) || !strings.Contains(d.Reason, "67108864") {
		t.Fatalf("dead letter %s: %q", d.Code, d.Reason)
	}
	if len(d.Payload) > tooLargePrefix || !strings.HasPrefix("xxxxxxxx", string(d.Payload[:8])) {
		t.Fatalf("dead letter keeps %d bytes of the payload, want at most %d", len(d.Payload), tooLargePrefix)
	}
	if err := c.Call(ctx, name+".add", meshtest.AddIn{A: 2, B: 2}, &out); err != nil || out.Sum != 4 {
		t.Fatalf("call after the oversized entry: %v %+v", err, out)
	}
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
