package integration

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

func inspector(t testing.TB) *redis.Client {
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// clientCount counts the server's connections named name: those of the
// buses under test, not of other tests' processes.
func clientCount(t testing.TB, rdb *redis.Client, name string) int {
	list, err := rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(list, " name="+name+" ")
}

// Not parallel: it counts every key and connection on the server, and Go
// runs parallel tests only after the sequential ones.
func TestTenThousandCallsLeaveNothingBehind(t *testing.T) {
	rdb := inspector(t)
	ctx := context.Background()
	service := meshtest.Name("leak")
	name := meshtest.Name("leaktest")
	cfg := bus.RedisConfig{TrimInterval: 100 * time.Millisecond, InboxRefresh: 100 * time.Millisecond, URL: redisURL + "?client_name=" + name}
	sb, err := bus.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h := meshtest.NewHarness(t, sb)
	h.Start(svc)
	cb, err := bus.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cb.Close() })
	c, err := client.New(cb, client.Config{Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	calls := func(n int) { addCalls(t, c, service+".add", n) }
	calls(500) // warm-up: pools and goroutines at their working size
	// and the replica's statistics in the registry, from its first
	// heartbeat after calls ran: a key made once, not per call.
	meshtest.Eventually(t, 10*time.Second, "no heartbeat with statistics", func() bool {
		return rdb.Exists(ctx, registry.StatsKey(service)).Val() == 1
	})
	// 10,000 calls in two equal batches: what leaks grows with each batch;
	// a pool reaching its working size does not come back.
	keysA, goroutinesA, connsA := rdb.DBSize(ctx).Val(), runtime.NumGoroutine(), clientCount(t, rdb, name)
	setA := keySet(t, rdb)
	calls(5000)
	keys0, goroutines0, conns0 := rdb.DBSize(ctx).Val(), runtime.NumGoroutine(), clientCount(t, rdb, name)
	set0 := keySet(t, rdb)
	calls(5000)
	keys, goroutines, conns := rdb.DBSize(ctx).Val(), runtime.NumGoroutine(), clientCount(t, rdb, name)
	t.Logf("after 500, 5,500 and 10,500 calls: keys %d, %d, %d; goroutines %d, %d, %d; connections %d, %d, %d",
		keysA, keys0, keys, goroutinesA, goroutines0, goroutines, connsA, conns0, conns)
	if keys0 != keysA {
		t.Errorf("Redis keys grew from %d to %d: %v", keysA, keys0, newKeys(t, rdb, setA))
	}
	if keys != keys0 {
		t.Errorf("Redis keys grew from %d to %d: %v", keys0, keys, newKeys(t, rdb, set0))
	}
	if goroutines > goroutines0+5 {
		t.Errorf("goroutines grew from %d to %d", goroutines0, goroutines)
	}
	if conns > conns0+2 {
		t.Errorf("connections grew from %d to %d", conns0, conns)
	}
	// Streams are trimmed: requests once acked, replies once read.
	meshtest.Eventually(t, 10*time.Second, "streams not trimmed", func() bool {
		req := rdb.XLen(ctx, bus.RequestTopic(service)).Val()
		rep := rdb.XLen(ctx, c.Inbox()).Val()
		t.Logf("request stream %d entries, reply stream %d", req, rep)
		return req < 500 && rep < 500
	})
	// A client that dies without closing leaves a key that expires.
	ttl := rdb.PTTL(ctx, c.Inbox()).Val()
	if ttl <= 0 || ttl > time.Minute {
		t.Errorf("reply stream TTL %v, want a TTL of at most a minute", ttl)
	}
	c.Close()
	if n := rdb.Exists(ctx, c.Inbox()).Val(); n != 0 {
		t.Errorf("closed client's reply stream still exists")
	}
}

// addCalls makes n calls of fn (a meshtest add) from 16 callers and fails
// the test on the first wrong answer.
func addCalls(t testing.TB, c *client.Client, fn string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				var out meshtest.AddOut
				if err := c.Call(context.Background(), fn, meshtest.AddIn{A: i, B: 1}, &out); err != nil || out.Sum != i+1 {
					select {
					case errs <- fmt.Errorf("%d+1: %v %+v", i, err, out):
					default:
					}
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("call failed: %v", err)
	}
}

// keySet lists every key on the server.
func keySet(t *testing.T, rdb *redis.Client) map[string]bool {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// newKeys lists the keys on the server that before lacks.
func newKeys(t *testing.T, rdb *redis.Client, before map[string]bool) []string {
	t.Helper()
	var out []string
	for k := range keySet(t, rdb) {
		if !before[k] {
			out = append(out, k)
		}
	}
	return out
}
