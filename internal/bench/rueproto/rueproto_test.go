package rueproto_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/bench/rueproto"
	"github.com/fnmesh/fnmesh/internal/redistest"
)

// redisURL is $REDIS_URL or a redis-server started for the test.
func redisURL(t *testing.T) string {
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	srv, err := redistest.Start(redistest.Options{})
	if err != nil {
		t.Fatalf("no Redis to test against (install redis-server or set REDIS_URL): %v", err)
	}
	t.Cleanup(srv.Kill)
	return srv.URL
}

// TestOneCall runs one call through the prototype and checks, with
// go-redis, that the request entry it stored is the bus's: the same
// fields, which the bus's own decoder reads back.
func TestOneCall(t *testing.T) {
	url := redisURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	service := "rueproto" + strconv.FormatInt(time.Now().UnixNano(), 10)
	rc, err := rueproto.NewClient(url, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	cfg := rueproto.Config{Block: 100 * time.Millisecond}
	caller, err := rueproto.NewCaller(ctx, rc, bus.ReplyTopic("t"+service), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer caller.Close()
	if _, err := caller.Call(ctx, service, "echo", []byte(`1`), time.Time{}); !errors.Is(err, rueproto.ErrNotServed) {
		t.Fatalf("call before any replica: %v, want ErrNotServed", err)
	}

	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- rueproto.Serve(sctx, rc, service, "r1", cfg, func(_ context.Context, r *bus.Request) *bus.Reply {
			return &bus.Reply{Payload: append([]byte(r.Function+":"), r.Payload...)}
		})
	}()
	var rep *bus.Reply
	for { // the replica makes the stream; until then the call is not served
		rep, err = caller.Call(ctx, service, "echo", []byte(`{"a":1}`), time.Now().Add(5*time.Second))
		if !errors.Is(err, rueproto.ErrNotServed) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if string(rep.Payload) != `echo:{"a":1}` || rep.Replica != "r1" || rep.Err != nil {
		t.Fatalf("reply %+v, want payload echo:{\"a\":1} from r1", rep)
	}
	stop()
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	xs, err := rdb.XRange(ctx, bus.RequestTopic(service), "-", "+").Result()
	if err != nil || len(xs) != 1 {
		t.Fatalf("request stream: %v %v, want one entry", xs, err)
	}
	v := xs[0].Values
	if v[bus.FieldVersion] != bus.ProtocolVersion || v[bus.FieldFunction] != "echo" || v[bus.FieldReplyTo] != bus.ReplyTopic("t"+service) || v[bus.FieldPayload] != `{"a":1}` || v[bus.FieldDeadline] == nil {
		t.Fatalf("request entry %v", v)
	}
	pending, err := rdb.XPending(ctx, bus.RequestTopic(service), bus.Group).Result()
	if err != nil || pending.Count != 0 {
		t.Fatalf("pending after the reply: %+v %v, want 0 (acked with the reply)", pending, err)
	}
	rdb.Del(ctx, bus.RequestTopic(service))
}
