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
	"github.com/fnmesh/fnmesh/bus/bustest"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redistest"
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

// A service and a caller run with nothing but the ACLs docs/SECURITY.md
// documents, on a redis-server that enforces them: calls, sends, the
// registry, the discovery check and the queue metrics work, and each user
// is refused what it was not given.
func TestDocumentedACLsAreEnough(t *testing.T) {
	srv, err := redistest.Start(redistest.Options{Users: []string{docACL(t, "service math"), docACL(t, "caller of math")}})
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
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: bustest.Quiet})
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: bustest.Quiet, MaxBacklog: 1000, Plugins: []handlers.Plugin{
		registry.NewAnnouncer(registry.Config{Heartbeat: 50 * time.Millisecond, TTL: 2 * time.Second, Stats: m}),
	}}
	m.InstrumentService(&cfg)
	svc := handlers.NewService("math", cfg)
	ran := make(chan int, 10)
	handlers.Register(svc, "add", func(_ context.Context, in bustest.AddIn) (bustest.AddOut, error) {
		ran <- in.A
		return bustest.AddOut{Sum: in.A + in.B}, nil
	})
	handlers.Register(svc, "add@v2", func(_ context.Context, in bustest.AddIn) (bustest.AddOut, error) {
		return bustest.AddOut{Sum: 2 * (in.A + in.B)}, nil
	})
	h := bustest.NewHarness(t, sb)
	h.Start(svc)

	// The caller, as user web (credentials in the URL).
	ccfg := fast
	ccfg.URL = userURL(srv.URL, "web", "web-secret")
	cb, err := bus.NewRedis(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cb.Close() })
	w, err := registry.NewWatcher(cb, registry.WatcherConfig{Logger: bustest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	c, err := client.New(cb, client.Config{Logger: bustest.Quiet, Registry: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var out bustest.AddOut
	if err := c.Call(ctx, "math.add", bustest.AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
		t.Fatalf("call as web: %v %+v", err, out)
	}
	if err := c.Call(ctx, "math.add@v2", bustest.AddIn{A: 1, B: 2}, &out); err != nil || out.Sum != 6 {
		t.Fatalf("versioned call as web: %v %+v", err, out)
	}
	if err := c.Send(ctx, "math.add", bustest.AddIn{A: 7}); err != nil {
		t.Fatal(err)
	}
	for got := range ran {
		if got == 7 {
			break
		}
	}
	bustest.WantCode(t, c.Call(ctx, "math.sub", bustest.AddIn{}, nil), fnmesh.CodeNotFound)
	if err := c.Call(ctx, "math.add", bustest.AddIn{A: 40, B: 2}, &out, client.WithIdempotencyKey("k1")); err != nil || out.Sum != 42 {
		t.Fatalf("idempotent call: %v %+v", err, out)
	}
	// A second call with the key is answered from it. (Right after the
	// first returns it may still be "running": the replica replies before
	// it records the key as done.)
	bustest.Eventually(t, 3*time.Second, "second call with the key not answered from it", func() bool {
		out = bustest.AddOut{}
		err := c.Call(ctx, "math.add", bustest.AddIn{A: 40, B: 2}, &out, client.WithIdempotencyKey("k1"))
		return err == nil && out.Sum == 42
	})
	// The caller reads the bound the service published.
	if bl, err := cb.Backlog(ctx, "math"); err != nil || bl.MaxBacklog != 1000 {
		t.Fatalf("backlog as web: %+v %v", bl, err)
	}
	// The registry heartbeat (a script) runs under the service's user.
	store := registry.NewRedisStore(sb.Client())
	bustest.Eventually(t, 3*time.Second, "stats not written by the heartbeat", func() bool {
		v, err := store.Service(ctx, "math")
		return err == nil && len(v.Replicas) == 1 && v.Replicas[0].Stats.Functions["add"].Calls >= 2
	})
	if q, err := store.Queue(ctx, "math"); err != nil {
		t.Fatalf("queue as math: %v", err)
	} else if q.Backlog != 0 {
		t.Fatalf("queue %+v", q)
	}

	// Redis denied nothing while the loops ran (claims, trims, inbox
	// refreshes every 50ms; heartbeats every 50ms): the heartbeat has
	// written stats twice more by now, so every loop has run.
	first := statsAt(t, store)
	bustest.Eventually(t, 3*time.Second, "no further heartbeat", func() bool {
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
	noperm("math writes another service's requests", sb.Client().XAdd(ctx, &redis.XAddArgs{Stream: bus.RequestTopic("mail"), Values: []any{"id", "1"}}).Err())
	noperm("math runs FLUSHALL", sb.Client().FlushAll(ctx).Err())
	noperm("web reads math's requests", cb.Client().XRange(ctx, bus.RequestTopic("math"), "-", "+").Err())
	noperm("web writes math's registry", cb.Client().HSet(ctx, registry.ReplicasKey("math"), "fake", "{}").Err())
	noperm("web writes a dead letter", cb.Client().XAdd(ctx, &redis.XAddArgs{Stream: bus.DeadLetterTopic("math"), Values: []any{"id", "1"}}).Err())

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
	files, err := redistest.NewTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := redistest.Start(redistest.Options{TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
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
	h := bustest.NewHarness(t, newBus())
	svc := handlers.NewService("tls", handlers.Config{AllowUnauthenticated: true, Logger: bustest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in bustest.AddIn) (bustest.AddOut, error) {
		return bustest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	cb := newBus()
	t.Cleanup(func() { cb.Close() })
	c, err := client.New(cb, client.Config{Logger: bustest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bustest.AddOut
	if err := c.Call(context.Background(), "tls.add", bustest.AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
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
