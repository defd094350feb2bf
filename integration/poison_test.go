package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// Replies that can never be written (a reply-to of the wrong type, a
// stream whose last id is the largest there is) end their requests in the
// dead letters with the reason, and the replica keeps answering everyone
// else at its normal latency while they arrive.
func TestUnwritableRepliesAreDeadLettered(t *testing.T) {
	ctx := context.Background()
	name := meshtest.Name("poison")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet, Concurrency: 4})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	c := h.Client(client.Config{Logger: meshtest.Quiet})
	rdb := inspector(t)

	// Dozens of requests whose reply-to cannot take a reply: ten times
	// the replica's concurrency.
	const poisoned = 40
	var keys []string
	for i := 0; i < poisoned; i++ {
		rt := bus.ReplyTopic(fmt.Sprintf("%s-%d", name, i))
		keys = append(keys, rt)
		if i%2 == 0 {
			if err := rdb.Set(ctx, rt, "not a stream", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		} else if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: rt, ID: "18446744073709551615-18446744073709551615", Values: []any{"hello", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { rdb.Del(context.Background(), keys...) })
	for i, rt := range keys {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: bus.RequestTopic(name), Values: []any{
			"v", "1", "id", fmt.Sprint("poison-", i), "fn", "add", "rt", rt, "p", `{"A":1,"B":2}`,
		}}).Err(); err != nil {
			t.Fatal(err)
		}
	}

	// A normal caller keeps getting answers meanwhile, each well within
	// a normal call's time on a busy machine.
	var slowest time.Duration
	for i := 0; i < 50; i++ {
		start := time.Now()
		var out meshtest.AddOut
		if err := c.Call(ctx, name+".add", meshtest.AddIn{A: i, B: 1}, &out, client.WithTimeout(5*time.Second)); err != nil || out.Sum != i+1 {
			t.Fatalf("call %d while poisoned requests arrive: %v %+v", i, err, out)
		}
		slowest = max(slowest, time.Since(start))
	}
	if slowest > 2*time.Second {
		t.Fatalf("slowest call took %v while poisoned requests arrived", slowest)
	}
	t.Logf("slowest of 50 calls: %v", slowest)

	// Each poisoned request ends in the dead letters, once, with why.
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 20*time.Second, "poisoned requests not dead-lettered", func() bool {
		var err error
		dls, err = h.Bus.DeadLetters(ctx, name, 1000)
		return err == nil && len(dls) >= poisoned
	})
	seen := map[string]bool{}
	for _, d := range dls {
		id := d.Fields[bus.FieldID]
		if seen[id] || !strings.HasPrefix(id, "poison-") {
			t.Fatalf("dead letter %q: twice, or not a poisoned request", id)
		}
		seen[id] = true
		if !strings.Contains(d.Reason, "cannot be written") || !(strings.Contains(d.Reason, "WRONGTYPE") || strings.Contains(d.Reason, "ERR")) {
			t.Fatalf("dead letter %s: reason %q does not say why", id, d.Reason)
		}
	}
	// And nothing of them stays pending.
	meshtest.Eventually(t, 10*time.Second, "poisoned requests still pending", func() bool {
		p, err := rdb.XPending(ctx, bus.RequestTopic(name), bus.Group).Result()
		return err == nil && p.Count == 0
	})
}
