package integration

import (
	"context"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/telemetry"
)

// docACL returns the ACL line of docs/SECURITY.md under "<!-- acl: label -->".
func docACL(t *testing.T, label string) string {
	doc, err := os.ReadFile("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- acl: " + regexp.QuoteMeta(label) + " -->\n```\n(.*?)\n```").FindSubmatch(doc)
	if m == nil {
		t.Fatalf("no ACL %q in docs/SECURITY.md", label)
	}
	return strings.TrimPrefix(string(m[1]), "user ")
}

func userURL(base, user, pass string) string {
	u, _ := url.Parse(base)
	u.User = url.UserPassword(user, pass)
	return u.String()
}

// A replica, two callers, a gateway and an operator run with nothing but
// the ACLs docs/SECURITY.md documents, on a redis-server that enforces
// them: calls, sends, the registry, the discovery check, the queue
// metrics and the dead-letter tools work; a caller can read neither the
// request stream (other callers' tokens) nor another caller's inbox, nor
// write into it; each user is refused what it was not given.
func TestDocumentedACLsAreEnough(t *testing.T) {
	web := docACL(t, "caller web of math")
	web2 := strings.ReplaceAll(web, "web", "web2") // a second caller, by the same template
	srv, err := redistest.Start(redistest.Options{Users: []string{
		docACL(t, "replica of math"), web, web2, docACL(t, "gateway"), docACL(t, "operator"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx := context.Background()

	// The service, as user math (credentials in RedisConfig).
	// Short intervals, so that the claim, janitor, trim and inbox loops run while
	// the test watches.
	fast := bus.RedisConfig{ClaimInterval: 50 * time.Millisecond, ClaimIdle: 300 * time.Millisecond, ConsumerExpiry: 400 * time.Millisecond, TrimInterval: 50 * time.Millisecond, InboxRefresh: 50 * time.Millisecond}
	scfg := fast
	scfg.URL, scfg.Username, scfg.Password = srv.URL, "math", "math-secret"
	sb, err := bus.NewRedis(scfg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: meshtest.Quiet})
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet, MaxBacklog: 1000, Plugins: []handlers.Plugin{
		registry.NewAnnouncer(registry.Config{Heartbeat: 50 * time.Millisecond, TTL: 2 * time.Second, Stats: m}),
	}}
	m.InstrumentService(&cfg)
	svc := handlers.NewService("math", cfg)
	ran := make(chan int, 10)
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		ran <- in.A
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	handlers.Register(svc, "add@v2", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: 2 * (in.A + in.B)}, nil
	})
	h := meshtest.NewHarness(t, sb)
	h.Start(svc)

	// A caller: a bus, a registry watcher and a client, as user (the
	// credentials in the URL).
	caller := func(user, pass string) (*bus.Redis, *client.Client) {
		ccfg := fast
		ccfg.URL = userURL(srv.URL, user, pass)
		cb, err := bus.NewRedis(ccfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cb.Close() })
		w, err := registry.NewWatcher(cb, registry.WatcherConfig{Logger: meshtest.Quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		c, err := client.New(cb, client.Config{Logger: meshtest.Quiet, Registry: w})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if want := "fnmesh:reply:{" + user + ":"; !strings.HasPrefix(c.Inbox(), want) {
			t.Fatalf("inbox %s of user %s, want %s...}", c.Inbox(), user, want)
		}
		return cb, c
	}
	cb, c := caller("web", "web-secret")
	var out meshtest.AddOut
	if err := c.Call(ctx, "math.add", meshtest.AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
		t.Fatalf("call as web: %v %+v", err, out)
	}
	if err := c.Call(ctx, "math.add@v2", meshtest.AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 6 {
		t.Fatalf("versioned call as web: %v %+v", err, out)
	}
	if err := c.Send(ctx, "math.add", meshtest.AddIn{A: 7}); err != nil {
		t.Fatal(err)
	}
	for got := range ran {
		if got == 7 {
			break
		}
	}
	meshtest.WantCode(t, c.Call(ctx, "math.sub", meshtest.AddIn{}, nil), fnmesh.CodeNotFound)
	if err := c.Call(ctx, "math.add", meshtest.AddIn{A: 40, B: 2}, &out, client.WithIdempotencyKey("k1")); err != nil || out.Sum != 42 {
		t.Fatalf("idempotent call: %v %+v", err, out)
	}
	// A second call with the key is answered from it. (Right after the
	// first returns it may still be "running": the replica replies before
	// it records the key as done.)
	meshtest.Eventually(t, 3*time.Second, "second call with the key not answered from it", func() bool {
		out = meshtest.AddOut{}
		err := c.Call(ctx, "math.add", meshtest.AddIn{A: 40, B: 2}, &out, client.WithIdempotencyKey("k1"))
		return err == nil && out.Sum == 42
	})
	// The caller reads the bound the service published.
	if bl, err := cb.Backlog(ctx, "math"); err != nil || bl.MaxBacklog != 1000 {
		t.Fatalf("backlog as web: %+v %v", bl, err)
	}
	// A Send that the replica dead-letters (its deadline passes before it
	// runs), for the operator below.
	if err := c.Send(ctx, "math.add", meshtest.AddIn{A: -1}, client.WithTimeout(time.Millisecond)); err != nil {
		t.Fatal(err)
	}

	// A second caller and the gateway call too.
	cb2, c2 := caller("web2", "web2-secret")
	if err := c2.Call(ctx, "math.add", meshtest.AddIn{A: 2, B: 2}, &out); err != nil || out.Sum != 4 {
		t.Fatalf("call as web2: %v %+v", err, out)
	}
	gb, gc := caller("gateway", "gateway-secret")
	if err := gc.Call(ctx, "math.add", meshtest.AddIn{A: 3, B: 2}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("call as gateway: %v %+v", err, out)
	}

	// The registry heartbeat (a script) runs under the service's user.
	store := registry.NewRedisStore(sb.Client())
	meshtest.Eventually(t, 3*time.Second, "stats not written by the heartbeat", func() bool {
		v, err := store.Service(ctx, "math")
		return err == nil && len(v.Replicas) == 1 && v.Replicas[0].Stats.Functions["add"].Calls >= 2
	})
	if q, err := store.Queue(ctx, "math"); err != nil {
		t.Fatalf("queue as math: %v", err)
	} else if q.Backlog != 0 {
		t.Fatalf("queue %+v", q)
	}

	// The operator: what fnmesh ls, describe, top and dlq do.
	ob, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL, Username: "ops", Password: "ops-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ob.Close() })
	ostore := registry.NewRedisStore(ob.Client())
	if svcs, err := ostore.Services(ctx); err != nil || len(svcs) != 1 || svcs[0] != "math" {
		t.Fatalf("services as ops: %v %v", svcs, err)
	}
	if v, err := ostore.Service(ctx, "math"); err != nil || len(v.Replicas) != 1 {
		t.Fatalf("service as ops: %+v %v", v, err)
	}
	if _, err := ostore.Queue(ctx, "math"); err != nil {
		t.Fatalf("queue as ops: %v", err)
	}
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 5*time.Second, "dead letter not listed to ops", func() bool {
		dls, err = ob.DeadLetters(ctx, "math", 10)
		return err == nil && len(dls) == 1
	})
	if svcs, err := ob.DeadLetterServices(ctx); err != nil || len(svcs) != 1 {
		t.Fatalf("dead-letter services as ops: %v %v", svcs, err)
	}
	if n, err := ob.ReplayDeadLetters(ctx, "math", dls[0].EntryID); err != nil || n != 1 {
		t.Fatalf("replay as ops: %d %v", n, err)
	}
	meshtest.Eventually(t, 5*time.Second, "replayed request not dead-lettered again", func() bool {
		dls, err = ob.DeadLetters(ctx, "math", 10)
		return err == nil && len(dls) == 1 && dls[0].Origin != "" && dls[0].Fields[bus.FieldReplayOf] != ""
	})
	if n, err := ob.PurgeDeadLetters(ctx, "math"); err != nil || n != 1 {
		t.Fatalf("purge as ops: %d %v", n, err)
	}

	// Redis denied nothing while the loops ran (claims, trims, inbox
	// refreshes every 50ms; heartbeats every 50ms): the heartbeat has
	// written stats twice more by now, so every loop has run.
	first := statsAt(t, store)
	meshtest.Eventually(t, 3*time.Second, "no further heartbeat", func() bool {
		return statsAt(t, store).Sub(first) >= 150*time.Millisecond
	})
	admin := inspectorAt(t, srv.URL)
	if log, err := admin.Do(ctx, "ACL", "LOG").Slice(); err != nil || len(log) != 0 {
		t.Fatalf("Redis denied commands of the documented ACLs (ACL LOG): %v %v", log, err)
	}

	// Each user is refused what it was not given.
	noperm := func(who string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s: got %v, want NOPERM", who, err)
		}
	}
	req, dead, inbox := bus.RequestTopic("math"), bus.DeadLetterTopic("math"), c.Inbox()
	other := cb2.Client()
	// The second caller against the first's inbox and the requests.
	noperm("web2 XRANGEs web's inbox", other.XRange(ctx, inbox, "-", "+").Err())
	noperm("web2 XREADs web's inbox", other.XRead(ctx, &redis.XReadArgs{Streams: []string{inbox, "0"}, Count: 1, Block: -1}).Err())
	noperm("web2 XADDs a forged reply to web's inbox", other.XAdd(ctx, &redis.XAddArgs{Stream: inbox, NoMkStream: true, Values: []any{"id", "x", "p", "1"}}).Err())
	noperm("web2 deletes web's inbox", other.Del(ctx, inbox).Err())
	noperm("web2 makes an inbox not under its name", other.XAdd(ctx, &redis.XAddArgs{Stream: bus.ReplyTopic("web:fake"), Values: []any{"hello", "inbox"}}).Err())
	noperm("web2 XRANGEs the requests", other.XRange(ctx, req, "-", "+").Err())
	noperm("web2 XREADs the requests", other.XRead(ctx, &redis.XReadArgs{Streams: []string{req, "0"}, Count: 1, Block: -1}).Err())
	noperm("web2 reads the requests with XINFO STREAM", other.Do(ctx, "XINFO", "STREAM", req, "FULL").Err())
	noperm("web2 XREADGROUPs the requests", other.XReadGroup(ctx, &redis.XReadGroupArgs{Group: bus.Group, Consumer: "thief", Streams: []string{req, ">"}, Count: 1, Block: -1}).Err())
	noperm("web2 deletes the requests", other.Del(ctx, req).Err())
	noperm("web2 trims the requests", other.XTrimMaxLen(ctx, req, 0).Err())
	noperm("web2 expires the requests", other.PExpire(ctx, req, time.Millisecond).Err())
	noperm("web2 reads the dead letters", other.XRange(ctx, dead, "-", "+").Err())
	noperm("web2 reads an idempotency key", other.Get(ctx, bus.IdempotencyTopic("math", "k1")).Err())
	noperm("web writes math's registry", cb.Client().HSet(ctx, registry.ReplicasKey("math"), "fake", "{}").Err())
	noperm("web writes a dead letter", cb.Client().XAdd(ctx, &redis.XAddArgs{Stream: dead, Values: []any{"id", "1"}}).Err())
	noperm("the gateway reads the requests", gb.Client().XRange(ctx, req, "-", "+").Err())
	noperm("the gateway reads web's inbox", gb.Client().XRange(ctx, inbox, "-", "+").Err())
	// The replica answers any inbox, and can do nothing else to it.
	noperm("math reads web's inbox", sb.Client().XRange(ctx, inbox, "-", "+").Err())
	noperm("math deletes web's inbox", sb.Client().Del(ctx, inbox).Err())
	noperm("math retypes web's inbox", sb.Client().Set(ctx, inbox, "x", 0).Err())
	noperm("math writes another service's requests", sb.Client().XAdd(ctx, &redis.XAddArgs{Stream: bus.RequestTopic("mail"), Values: []any{"id", "1"}}).Err())
	noperm("math runs FLUSHALL", sb.Client().FlushAll(ctx).Err())
	noperm("ops writes a reply", ob.Client().XAdd(ctx, &redis.XAddArgs{Stream: inbox, Values: []any{"id", "1"}}).Err())
	noperm("ops runs FLUSHALL", ob.Client().FlushAll(ctx).Err())
	noperm("ops runs KEYS", ob.Client().Keys(ctx, "*").Err())
	// And what web still has works: its inbox took every reply.
	if err := c.Call(ctx, "math.add", meshtest.AddIn{A: 5, B: 5}, &out); err != nil || out.Sum != 10 {
		t.Fatalf("call as web at the end: %v %+v", err, out)
	}

	// A wrong password gets no further than the connection.
	bad, _ := bus.NewRedis(bus.RedisConfig{URL: srv.URL, Username: "math", Password: "wrong"})
	defer bad.Close()
	if err := bad.Client().Ping(ctx).Err(); err == nil || !strings.Contains(strings.ToUpper(err.Error()), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
}

// rediss:// with the server's CA: a service and a caller over TLS; a
// client that does not trust the CA cannot connect.
func TestTLS(t *testing.T) {
	srv, files := tlsServer(t)
	if !strings.HasPrefix(srv.URL, "rediss://") {
		t.Fatalf("URL %s", srv.URL)
	}
	tc, err := bus.TLSFiles{CAFile: files.CAFile}.Config()
	if err != nil {
		t.Fatal(err)
	}
	newBus := func() *bus.Redis {
		b, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL, TLS: tc})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	h := meshtest.NewHarness(t, newBus())
	svc := handlers.NewService("tls", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	cb := newBus()
	t.Cleanup(func() { cb.Close() })
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out meshtest.AddOut
	if err := c.Call(context.Background(), "tls.add", meshtest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("call over TLS: %v %+v", err, out)
	}
	// rediss:// alone trusts the system's CAs only: the test CA is not one.
	untrusted, _ := bus.NewRedis(bus.RedisConfig{URL: srv.URL})
	defer untrusted.Close()
	if err := untrusted.Client().Ping(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client without the CA: %v, want a certificate error", err)
	}
	if _, err := (bus.TLSFiles{CAFile: "/nonexistent/ca.pem"}).Config(); err == nil {
		t.Fatal("TLSFiles accepted a missing CA file")
	}
}

func statsAt(t *testing.T, s *registry.RedisStore) time.Time {
	v, err := s.Service(context.Background(), "math")
	if err != nil || len(v.Replicas) == 0 {
		t.Fatalf("registry: %v", err)
	}
	return v.Replicas[0].Stats.At
}

// The documented replica ACL is enough for the Python replica too, whose
// connections name themselves (CLIENT SETNAME): it serves a Go caller.
func TestDocumentedReplicaACLServesPython(t *testing.T) {
	srv, err := redistest.Start(redistest.Options{Users: []string{docACL(t, "replica of math")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	argv := []string{pythonBin, pythonInterop(t), "serve", "math", "py-acl"}
	startForeignReplicaEnv(t, "python", "py-acl", argv, []string{"REDIS_URL=" + userURL(srv.URL, "math", "math-secret")}, 30*time.Second, 15*time.Second)
	c := newClientOn(t, bus.RedisConfig{URL: srv.URL}, client.Config{SkipRegistryCheck: true})
	var out struct{ Value float64 }
	if err := c.Call(context.Background(), "math.add", map[string]int{"a": 1, "b": 2}, &out, client.WithTimeout(10*time.Second)); err != nil || out.Value != 3 {
		t.Fatalf("Python replica under the documented ACL: %v %+v", err, out)
	}
}

// tlsServer starts a redis-server that speaks only TLS, with certificates
// of a CA of its own (files), stopped when the test ends.
func tlsServer(t *testing.T) (*redistest.Server, *redistest.TLSFiles) {
	files, err := redistest.NewTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := redistest.Start(redistest.Options{TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, files
}
