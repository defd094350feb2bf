package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
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
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

type discoIn struct {
	N int `json:"n"`
}

// discoService is a service as the README writes one: no plugin, no
// registry code.
func discoService(name string) *handlers.Service {
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "double", func(_ context.Context, in discoIn) (int, error) { return 2 * in.N, nil })
	handlers.Register(svc, "refuse", func(_ context.Context, in discoIn) (int, error) {
		return 0, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "refused %d", in.N)
	})
	return svc
}

// A service with default configuration is in the registry (what fnmesh
// ls and describe read); callers fail at once on a typo, and a send to a
// service never known creates no key on Redis.
func TestDiscoveryByDefault(t *testing.T) {
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	h := &meshtest.Harness{T: t, Bus: b}
	name := meshtest.Name("disco")
	svc := discoService(name)
	h.StartStoppable(svc)
	<-svc.Started()
	view, err := registry.NewRedisStore(b.Client()).Service(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if !view.Serves("double") || len(view.Replicas) != 1 || len(view.Replicas[0].Functions[0].Request) == 0 {
		t.Fatalf("a default service is not in the registry with its schemas: %+v", view)
	}
	c := h.Client(client.Config{})
	var out int
	if err := c.Call(ctx, name+".double", discoIn{N: 21}, &out); err != nil || out != 42 {
		t.Fatalf("call: %v %d", err, out)
	}
	nosuch := meshtest.Name("nosuch")
	for _, send := range []bool{false, true} {
		start := time.Now()
		if send {
			err = c.Send(ctx, nosuch+".fn", discoIn{})
		} else {
			err = c.Call(ctx, nosuch+".fn", discoIn{}, nil, client.WithTimeout(10*time.Second))
		}
		meshtest.WantCode(t, err, fnmesh.CodeNotFound)
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("send=%v: not_found after %v, want at once", send, took)
		}
	}
	meshtest.WantCode(t, c.Call(ctx, name+".tripple", discoIn{}, nil), fnmesh.CodeNotFound)
	n, err := b.Client().Exists(ctx, bus.RequestTopic(nosuch)).Result()
	if err != nil || n != 0 {
		t.Fatalf("a send to a service never known created its stream: %d %v", n, err)
	}
}

// A service that started after the caller's first look is found on the
// next call (the view is read again on a miss, at most every 100ms).
func TestDiscoveryFindsANewService(t *testing.T) {
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	h := &meshtest.Harness{T: t, Bus: b}
	name := meshtest.Name("late")
	c := h.Client(client.Config{})
	meshtest.WantCode(t, c.Call(ctx, name+".double", discoIn{N: 1}, nil), fnmesh.CodeNotFound)
	svc := discoService(name)
	h.StartStoppable(svc)
	<-svc.Started()
	meshtest.Eventually(t, 2*time.Second, "a new service is still not_found", func() bool {
		return c.Call(ctx, name+".double", discoIn{N: 1}, nil) == nil
	})
}

// Sends are recorded: queued with no replica (scale from zero), done
// once a replica ran them, dead_lettered with the reason; the gateway
// and fnmesh status read the same records.
func TestSendStatusOnRedis(t *testing.T) {
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	h := &meshtest.Harness{T: t, Bus: b}
	name := meshtest.Name("status")
	svc := discoService(name)
	stop := h.StartStoppable(svc)
	<-svc.Started()
	c := h.Client(client.Config{})
	status := registry.NewRedisStatusStore(b.Client())
	send := func(fn string) string {
		var info client.ReplyInfo
		if err := c.Send(ctx, name+"."+fn, discoIn{N: 1}, client.WithReplyInfo(&info)); err != nil {
			t.Fatal(err)
		}
		return info.RequestID
	}
	state := func(id string) registry.Status {
		st, err := status.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	done, refused := send("double"), send("refuse")
	meshtest.Eventually(t, 5*time.Second, "send not done", func() bool { return state(done).State == registry.StateDone })
	meshtest.Eventually(t, 5*time.Second, "refused send not dead-lettered", func() bool { return state(refused).State == registry.StateDeadLettered })
	if st := state(refused); st.Code != string(fnmesh.CodeInvalidArgument) || !strings.Contains(st.Reason, "refused 1") {
		t.Fatalf("dead-lettered status lacks the reason: %+v", st)
	}
	if st := state("no-such-request"); st.State != registry.StateUnknown {
		t.Fatalf("unknown id: %+v", st)
	}
	ttl, err := b.Client().PTTL(ctx, registry.StatusKey(done)).Result()
	if err != nil || ttl <= 0 || ttl > registry.DefaultStatusTTL {
		t.Fatalf("status record's TTL %v (%v), want at most %v", ttl, err, registry.DefaultStatusTTL)
	}

	// Scaled to zero: the replica left; a call fails at once, a send waits.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 3*time.Second, "call to a service with no replica not unavailable", func() bool {
		return fnmesh.CodeOf(c.Call(ctx, name+".double", discoIn{}, nil, client.WithTimeout(200*time.Millisecond))) == fnmesh.CodeUnavailable
	})
	queued := send("double")
	meshtest.Eventually(t, 5*time.Second, "send with no replica not recorded as queued", func() bool { return state(queued).State == registry.StateQueued })

	g, err := gateway.New(gateway.Config{Client: c, AllowUnauthenticated: true, Status: status, Logger: meshtest.Quiet,
		Catalog: gateway.NewRegistryCatalog(registry.NewRedisStore(b.Client()), 50*time.Millisecond, 20*time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	var got registry.Status
	getJSON(t, srv.URL+"/v1/requests/"+queued, &got)
	if got.State != registry.StateQueued {
		t.Fatalf("gateway: %+v, want queued", got)
	}
	// A replica comes back: the queued send runs, and the gateway's
	// catalog lists the service again.
	again := discoService(name)
	h.StartStoppable(again)
	<-again.Started()
	meshtest.Eventually(t, 5*time.Second, "queued send not run once a replica started", func() bool {
		getJSON(t, srv.URL+"/v1/requests/"+queued, &got)
		return got.State == registry.StateDone
	})
	var cat gateway.CatalogFile
	meshtest.Eventually(t, 2*time.Second, "gateway catalog does not list the service's functions", func() bool {
		getJSON(t, srv.URL+"/v1/functions", &cat)
		for _, f := range cat.Functions {
			if f.Name == name+".double" && strings.Contains(string(f.Request), `"n"`) {
				return true
			}
		}
		return false
	})
	// An unknown service through the gateway: 404 at once, not a 504.
	start := time.Now()
	resp, err := http.Post(srv.URL+"/v1/functions/"+meshtest.Name("nosuch")+"/fn", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || time.Since(start) > 2*time.Second {
		t.Fatalf("unknown service via the gateway: %d after %v", resp.StatusCode, time.Since(start))
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatal(errors.Join(err, errors.New(string(body))))
	}
}

// The CLI as a new user meets it: a typo fails at once with not_found,
// send to an unknown service exits non-zero and creates nothing, describe
// says not_found, and fnmesh status follows a send to done.
func TestCLIFailsFastAndTellsStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	h := &meshtest.Harness{T: t, Bus: b}
	name := meshtest.Name("clidisco")
	svc := discoService(name)
	h.StartStoppable(svc)
	<-svc.Started()
	nosuch := meshtest.Name("nosuch")
	fnmeshCLI(t) // built before the clock starts
	start := time.Now()
	out, err := runCLI(t, "call", nosuch+".fn", "{}")
	if err == nil || !strings.Contains(out, "not_found") || time.Since(start) > 8*time.Second {
		t.Fatalf("call of an unknown service: %v after %v\n%s", err, time.Since(start), out)
	}
	if out, err := runCLI(t, "send", nosuch+".fn", "{}"); err == nil || !strings.Contains(out, "not_found") {
		t.Fatalf("send to an unknown service: %v\n%s", err, out)
	}
	if n, _ := b.Client().Exists(ctx, bus.RequestTopic(nosuch)).Result(); n != 0 {
		t.Fatal("fnmesh send created the request stream of an unknown service")
	}
	if out, err := runCLI(t, "describe", nosuch); err == nil || !strings.Contains(out, "not_found") {
		t.Fatalf("describe of an unknown service: %v\n%s", err, out)
	}
	out, err = runCLI(t, "send", name+".double", `{"n":2}`)
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out)
	}
	id := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "queued "))
	meshtest.Eventually(t, 10*time.Second, "fnmesh status never said done", func() bool {
		out, err := runCLI(t, "status", id)
		return err == nil && strings.HasPrefix(out, "done "+name+".double on replica ")
	})
	if out, err := runCLI(t, "status", "no-such-id"); err == nil || !strings.HasPrefix(out, "unknown") {
		t.Fatalf("status of an unknown id: %v\n%s", err, out)
	}
}

// commandCalls reads how many times Redis ran a command (INFO
// commandstats), e.g. "exec".
func commandCalls(t *testing.T, rdb *redis.Client, cmd string) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// statusRoundTrips counts the pipelines a client sends that write status
// records.
type statusRoundTrips struct{ n atomic.Int64 }

func (h *statusRoundTrips) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *statusRoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *statusRoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if args := c.Args(); len(args) > 1 && strings.HasPrefix(fmt.Sprintf("%s", args[1]), "fnmesh:status:") {
				h.n.Add(1)
				break
			}
		}
		return next(ctx, cmds)
	}
}

// Status records cost sends no round trip of their own and Redis little
// work: the caller's queued records and the replica's running and done
// records are written in batches, far fewer round trips than there are
// sends, one plain command per record (no script, no transaction), and
// every send still ends up done.
func TestStatusRecordsAreBatched(t *testing.T) {
	ctx := context.Background()
	const sends = 400
	b := newRedisBus(t, busConfig())
	trips := &statusRoundTrips{}
	b.Client().AddHook(trips)
	h := &meshtest.Harness{T: t, Bus: b}
	name := meshtest.Name("statusbatch")
	svc := discoService(name)
	h.Start(svc)
	<-svc.Started()
	c := h.Client(client.Config{})
	rdb := inspector(t)
	recordCommands := func() (n int) {
		for _, cmd := range []string{"set", "hset", "hsetnx", "pexpire", "evalsha", "eval", "exec"} {
			n += commandCalls(t, rdb, cmd)
		}
		return n
	}
	before := recordCommands()
	ids := make([]string, sends)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var info client.ReplyInfo
			if err := c.Send(ctx, name+".double", discoIn{N: i}, client.WithReplyInfo(&info)); err != nil {
				t.Error(err)
			}
			ids[i] = info.RequestID
		}()
	}
	wg.Wait()
	status := registry.NewRedisStatusStore(b.Client())
	meshtest.Eventually(t, 20*time.Second, "not every send recorded as done", func() bool {
		for _, id := range ids {
			if st, err := status.Get(ctx, id); err != nil || st.State != registry.StateDone {
				return false
			}
		}
		return true
	})
	n := trips.n.Load()
	if n == 0 || n > sends/4 {
		t.Fatalf("%d round trips for %d sends' status records, want them batched (at most %d)", n, sends, sends/4)
	}
	// One command per record: the caller's queued, the replica's done,
	// and its running where the run outlasted a batch's wait (else
	// merged into done).
	cmds := recordCommands() - before
	if cmds < sends || cmds > 3*sends {
		t.Fatalf("Redis ran %d commands for %d sends' status records, want one per record (at most 3 per send)", cmds, sends)
	}
	t.Logf("%d round trips, %d commands for %d sends' status records", n, cmds, sends)
}
