// Package registrytest is the registry's behaviour suite, run on the
// in-memory bus (registry's tests) and on Redis (integration tests).
package registrytest

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// Run runs every registry behaviour test against buses from newBus.
func Run(t *testing.T, newBus meshtest.NewBus) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *meshtest.Harness)
	}{
		{"AnnounceDescribesFunctions", testAnnounce},
		{"CallsFailFast", testFailFast},
		{"VersionedFunctionsSideBySide", testVersioned},
		{"CrashedReplicaExpires", testExpiry},
		{"DeadRecordsArePruned", testPrune},
		{"BreakingChangeIsReported", testBreaking},
		{"HeartbeatCarriesStats", testStats},
		{"QueueBacklogPendingDeadLetters", testQueue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, meshtest.NewHarness(t, newBus(t)))
		})
	}
}

// AddIn is math.add's arguments in the suite.
type AddIn struct {
	A int `json:"a" validate:"gte=0"`
	B int `json:"b" validate:"required,lte=100"`
}

// AddOut is its result.
type AddOut struct {
	Sum int `json:"sum"`
}

func add(_ context.Context, in AddIn) (AddOut, error) { return AddOut{Sum: in.A + in.B}, nil }

// fast is the registry configuration of the suite: short heartbeats, so
// stats show quickly, and a TTL that a loaded machine (the race
// detector, parallel packages) does not miss. Tests of expiry set their
// own TTL.
func fast() registry.Config {
	return registry.Config{Version: "1.0.0", Heartbeat: 50 * time.Millisecond, TTL: 2 * time.Second}
}

func service(name string, cfg registry.Config) *handlers.Service {
	return handlers.NewService(name, handlers.Config{
		AllowUnauthenticated: true, Logger: meshtest.Quiet,
		Plugins: []handlers.Plugin{registry.NewAnnouncer(cfg)},
	})
}

func store(t *testing.T, h *meshtest.Harness) registry.Store {
	s, err := registry.StoreFor(h.Bus)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func view(t *testing.T, s registry.Store, name string) *registry.ServiceView {
	t.Helper()
	v, err := s.Service(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testAnnounce(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("math")
	svc := service(name, fast())
	handlers.Register(svc, "add", add)
	h.Start(svc)
	s := store(t, h)
	v := view(t, s, name)
	if len(v.Replicas) != 1 {
		t.Fatalf("%d replicas, want 1", len(v.Replicas))
	}
	r := v.Replicas[0]
	if r.Service != name || r.ID == "" || r.Host == "" || r.Version != "1.0.0" || r.StartedAt.IsZero() || time.Since(r.StartedAt) > time.Minute {
		t.Fatalf("record %+v", r)
	}
	if !r.Expires.After(time.Now()) {
		t.Fatalf("live replica expires %v", r.Expires)
	}
	f, ok := r.Function("add")
	if !ok || f.Access != "open" {
		t.Fatalf("function add: %+v", f)
	}
	var schema struct {
		Type       string                    `json:"type"`
		Required   []string                  `json:"required"`
		Properties map[string]map[string]any `json:"properties"`
	}
	if err := json.Unmarshal(f.Request, &schema); err != nil {
		t.Fatal(err)
	}
	if schema.Type != "object" || len(schema.Required) != 1 || schema.Required[0] != "b" {
		t.Fatalf("request schema %s", f.Request)
	}
	if schema.Properties["a"]["minimum"] != 0.0 || schema.Properties["b"]["maximum"] != 100.0 || schema.Properties["b"]["x-validate"] != "required,lte=100" {
		t.Fatalf("validation rules missing from %s", f.Request)
	}
	if !strings.Contains(string(f.Response), `"sum"`) {
		t.Fatalf("response schema %s", f.Response)
	}
	services, err := s.Services(context.Background())
	if err != nil || !contains(services, name) {
		t.Fatalf("Services() = %v, %v; want it to list %s", services, err, name)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func watcherClient(t *testing.T, h *meshtest.Harness) (*client.Client, *registry.Watcher) {
	w, err := registry.NewWatcher(h.Bus, registry.WatcherConfig{Refresh: 50 * time.Millisecond, Recheck: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return h.Client(client.Config{Registry: w, Breaker: client.BreakerConfig{Disabled: true}}), w
}

// failFastBound tells a call failed by the registry's view from one that
// waited for its one-minute deadline.
const failFastBound = 15 * time.Second

func testFailFast(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("math")
	svc := service(name, fast())
	handlers.Register(svc, "add", add)
	stop := h.StartStoppable(svc)
	<-svc.Started()
	c, _ := watcherClient(t, h)
	ctx := context.Background()
	var out AddOut
	if err := c.Call(ctx, name+".add", AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
		t.Fatalf("call: %v %+v", err, out)
	}
	// Calls that may wait a minute: failing fast means failing well before
	// that (failFastBound), which a loaded machine cannot break.
	timed := func(fn string) (error, time.Duration) {
		start := time.Now()
		err := c.Call(ctx, fn, AddIn{B: 1}, nil, client.WithTimeout(time.Minute))
		return err, time.Since(start)
	}
	err, took := timed(meshtest.Name("nosuch") + ".add")
	fe := meshtest.WantCode(t, err, fnmesh.CodeNotFound)
	if took > failFastBound || !strings.Contains(fe.Message, "not in the registry") {
		t.Fatalf("unknown service: %v after %v", err, took)
	}
	err, took = timed(name + ".sub")
	fe = meshtest.WantCode(t, err, fnmesh.CodeNotFound)
	if took > failFastBound || !strings.Contains(fe.Message, "serves add") {
		t.Fatalf("unknown function: %v after %v", err, took)
	}
	// Sends are checked too.
	meshtest.WantCode(t, c.Send(ctx, name+".sub", AddIn{B: 1}), fnmesh.CodeNotFound)

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The replica left on its way out; within a refresh the view knows.
	// A call in that window waits for its deadline: keep them short.
	meshtest.Eventually(t, 10*time.Second, "calls to a service with no live replica fail with unavailable", func() bool {
		err := c.Call(ctx, name+".add", AddIn{B: 1}, nil, client.WithTimeout(200*time.Millisecond))
		return fnmesh.CodeOf(err) == fnmesh.CodeUnavailable
	})
	err, took = timed(name + ".add")
	if fnmesh.CodeOf(err) != fnmesh.CodeUnavailable || took > failFastBound {
		t.Fatalf("call with no live replica: %v after %v, want unavailable at once", err, took)
	}
	// A send to a function served lately is queued for the next replica
	// (scale from zero), and runs once one starts.
	var info client.ReplyInfo
	if err := c.Send(ctx, name+".add", AddIn{A: 2, B: 3}, client.WithReplyInfo(&info)); err != nil {
		t.Fatalf("send to a known function with no live replica: %v, want queued", err)
	}
	status, err := registry.StatusStoreFor(h.Bus)
	if err != nil {
		t.Fatal(err)
	}
	// The record is written in the background, a round trip or so later.
	meshtest.Eventually(t, 5*time.Second, "queued send not recorded as queued", func() bool {
		st, _ := status.Get(ctx, info.RequestID)
		return st.State == registry.StateQueued
	})
	again := service(name, fast())
	handlers.Register(again, "add", add)
	h.StartStoppable(again)
	meshtest.Eventually(t, 10*time.Second, "queued send not run once a replica started", func() bool {
		st, _ := status.Get(ctx, info.RequestID)
		return st.State == registry.StateDone && st.Replica != ""
	})
}

func testVersioned(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("math")
	type AddV2In struct {
		Terms []int `json:"terms" validate:"required,min=1"`
	}
	old := service(name, fast())
	handlers.Register(old, "add", add)
	h.Start(old)
	next := service(name, fast())
	handlers.Register(next, "add@v2", func(_ context.Context, in AddV2In) (AddOut, error) {
		s := 0
		for _, x := range in.Terms {
			s += x
		}
		return AddOut{Sum: s}, nil
	})
	h.Start(next)
	c, _ := watcherClient(t, h)
	// A versioned function has a request stream of its own: each version
	// reaches only the replicas that serve it, every time.
	v := view(t, store(t, h), name)
	if got := strings.Join(v.Functions(), ","); got != "add,add@v2" {
		t.Fatalf("functions %s, want add,add@v2", got)
	}
	if cs := v.Conflicts(); len(cs) != 0 {
		t.Fatalf("versioned functions reported as conflicts: %+v", cs)
	}
	for i := 0; i < 20; i++ {
		var out AddOut
		if err := c.Call(context.Background(), name+".add@v2", AddV2In{Terms: []int{1, 2, i}}, &out); err != nil || out.Sum != 3+i {
			t.Fatalf("add@v2: %v %+v", err, out)
		}
		if err := c.Call(context.Background(), name+".add", AddIn{A: i, B: 1}, &out); err != nil || out.Sum != i+1 {
			t.Fatalf("add: %v %+v", err, out)
		}
	}
}

func testExpiry(t *testing.T, h *meshtest.Harness) {
	s := store(t, h)
	name := meshtest.Name("ghost")
	ctx := context.Background()
	// A replica that announced and then died without leaving (SIGKILL):
	// nothing heartbeats for it.
	rec := &registry.Replica{Service: name, ID: "crashed-1", Host: "h", StartedAt: time.Now(),
		Functions: []registry.Function{{Name: "f", Request: json.RawMessage(`{}`), Response: json.RawMessage(`{}`)}}}
	ttl := 300 * time.Millisecond
	if err := s.Announce(ctx, rec, ttl, time.Hour); err != nil {
		t.Fatal(err)
	}
	if v := view(t, s, name); len(v.Replicas) != 1 {
		t.Fatalf("announced replica not listed: %+v", v)
	}
	start := time.Now()
	meshtest.Eventually(t, 3*time.Second, "crashed replica still listed", func() bool {
		return len(view(t, s, name).Replicas) == 0
	})
	if took := time.Since(start); took > ttl+time.Second {
		t.Fatalf("a replica that stopped heartbeating was listed %v, want about its TTL %v", took, ttl)
	}
	v := view(t, s, name)
	if !v.Knows("f") || v.Serves("f") {
		t.Fatalf("after expiry: knows f %v, serves f %v; want known, not served", v.Knows("f"), v.Serves("f"))
	}
	// A heartbeat for an expired record asks for a new announcement.
	ok, err := s.Heartbeat(ctx, name, "crashed-1", []string{"f"}, registry.Stats{}, ttl, time.Hour)
	if err != nil || ok {
		t.Fatalf("heartbeat of an expired record: %v %v, want false", ok, err)
	}
}

// testPrune: replicas that restart (new ids) and crash leave no records
// behind once a live replica heartbeats.
func testPrune(t *testing.T, h *meshtest.Harness) {
	s := store(t, h)
	name := meshtest.Name("churn")
	ctx := context.Background()
	ttl := 200 * time.Millisecond
	for i := 0; i < 20; i++ {
		rec := &registry.Replica{Service: name, ID: "gone-" + string(rune('a'+i)), StartedAt: time.Now()}
		if err := s.Announce(ctx, rec, ttl, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	svc := service(name, registry.Config{Heartbeat: 50 * time.Millisecond, TTL: time.Second})
	handlers.Register(svc, "add", add)
	h.Start(svc)
	meshtest.Eventually(t, 3*time.Second, "dead records not pruned", func() bool {
		n, err := RecordCount(ctx, s, name)
		return err == nil && n == 1
	})
}

// RecordCount returns how many replica records (live or dead) the store
// holds for service; a store that cannot say returns the live count.
func RecordCount(ctx context.Context, s registry.Store, service string) (int, error) {
	if c, ok := s.(interface {
		RecordCount(context.Context, string) (int, error)
	}); ok {
		return c.RecordCount(ctx, service)
	}
	v, err := s.Service(ctx, service)
	if err != nil {
		return 0, err
	}
	return len(v.Replicas), nil
}

func testBreaking(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("math")
	v1 := service(name, fast())
	handlers.Register(v1, "add", add)
	h.Start(v1)
	// A new build renames b to c and requires it: old callers break.
	type AddInV2 struct {
		A int `json:"a" validate:"gte=0"`
		C int `json:"c" validate:"required"`
	}
	var logs meshtest.SyncBuffer
	v2 := handlers.NewService(name, handlers.Config{
		AllowUnauthenticated: true, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Plugins: []handlers.Plugin{registry.NewAnnouncer(fast())},
	})
	handlers.Register(v2, "add", func(_ context.Context, in AddInV2) (AddOut, error) { return AddOut{}, nil })
	h.Start(v2)
	if !strings.Contains(logs.String(), "breaking change") || !strings.Contains(logs.String(), "b removed") {
		t.Fatalf("no breaking-change log:\n%s", logs.String())
	}
	cs := view(t, store(t, h), name).Conflicts()
	if len(cs) != 1 || cs[0].Function != "add" {
		t.Fatalf("conflicts %+v, want one for add", cs)
	}
	kinds := map[string]registry.ChangeKind{}
	for _, c := range cs[0].Changes {
		kinds[c.Path] = c.Kind
	}
	if kinds["b"] != registry.Removed || kinds["c"] != registry.Required {
		t.Fatalf("changes %+v, want b removed and c required", cs[0].Changes)
	}
}

type fakeStats struct{ inFlight atomic.Int64 }

func (f *fakeStats) ReplicaStats(string) map[string]registry.FunctionStats {
	return map[string]registry.FunctionStats{"add": {Calls: 7, Errors: 1, InFlight: f.inFlight.Load(), Latency: []uint64{1, 2}}}
}

func testStats(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("math")
	cfg := fast()
	cfg.Stats = &fakeStats{}
	svc := service(name, cfg)
	handlers.Register(svc, "add", add)
	h.Start(svc)
	s := store(t, h)
	meshtest.Eventually(t, 3*time.Second, "stats not in the registry", func() bool {
		v := view(t, s, name)
		if len(v.Replicas) != 1 {
			return false
		}
		st := v.Replicas[0].Stats
		fs := st.Functions["add"]
		return !st.At.IsZero() && fs.Calls == 7 && fs.Errors == 1 && len(fs.Latency) == 2
	})
}

func testQueue(t *testing.T, h *meshtest.Harness) {
	name := meshtest.Name("q")
	stats := &fakeStats{}
	cfg := fast()
	cfg.Stats = stats
	svc := service(name, cfg)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (AddOut, error) {
		stats.inFlight.Add(1)
		defer stats.inFlight.Add(-1)
		entered <- struct{}{}
		<-release
		return AddOut{}, nil
	})
	stop := h.StartStoppable(svc)
	<-svc.Started()
	s := store(t, h)
	c := h.Client(client.Config{})
	ctx := context.Background()
	if err := c.Send(ctx, name+".add", AddIn{B: 1}); err != nil {
		t.Fatal(err)
	}
	<-entered
	meshtest.Eventually(t, 3*time.Second, "pending request not counted", func() bool {
		q, err := s.Queue(ctx, name)
		return err == nil && q.Pending == 1
	})
	close(release)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// No replica runs now: sends wait in the backlog.
	for i := 0; i < 3; i++ {
		if err := c.Send(ctx, name+".add", AddIn{B: 1}); err != nil {
			t.Fatal(err)
		}
	}
	q, err := s.Queue(ctx, name)
	if err != nil || q.Backlog != 3 {
		t.Fatalf("queue %+v, %v; want a backlog of 3", q, err)
	}
	// A request that cannot run is a dead letter.
	bad := (&bus.Request{ID: "x", Function: "nope"}).Message()
	if err := h.Bus.Publisher().Publish(bus.DeadLetterTopic(name), bus.NewDeadLetterMessage(bad, "", "test", fnmesh.CodeNotFound, "test", 0)); err != nil {
		t.Fatal(err)
	}
	if q, err := s.Queue(ctx, name); err != nil || q.DeadLetters != 1 {
		t.Fatalf("queue %+v, %v; want one dead letter", q, err)
	}
}
