package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
)

// The bus writes requests and replies on a connection of its own. When
// Redis drops that connection while it is idle (a restart, a timeout, a
// CLIENT KILL), the next send notices at its first round trip and goes
// through on a new connection: the caller sees no error, and the request
// is stored once.
func TestSendAfterConnectionKilled(t *testing.T) {
	ctx := context.Background()
	admin := newRedisBus(t, busConfig())
	defer admin.Close()
	rdb := admin.Client()
	before := clientIDs(t, rdb.ClientList(ctx).Val(), "")

	b := newRedisBus(t, busConfig())
	defer b.Close()
	service := meshtest.Name("killed")
	// As a replica would: requests never create a service's stream.
	if err := rdb.XGroupCreateMkStream(ctx, bus.RequestTopic(service), bus.Group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	defer rdb.Del(ctx, bus.RequestTopic(service))
	send := func(id string) {
		t.Helper()
		if err := b.SendRequest(ctx, service, &bus.Request{ID: id, Function: "f", Payload: []byte(`{}`)}); err != nil {
			t.Fatalf("send %s: %v", id, err)
		}
	}
	send("1")
	var killed int
	for id := range clientIDs(t, rdb.ClientList(ctx).Val(), "xadd") {
		if !before[id] {
			if err := rdb.Do(ctx, "client", "kill", "id", id).Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d connections that last ran XADD, want the bus's one", killed)
	}
	send("2")
	if n := rdb.XLen(ctx, bus.RequestTopic(service)).Val(); n != 2 {
		t.Fatalf("request stream holds %d entries, want 2", n)
	}
}

// clientIDs returns the ids in a CLIENT LIST whose last command is cmd
// (any, if cmd is "").
func clientIDs(t *testing.T, list, cmd string) map[string]bool {
	ids := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		var id, last string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id = v
			}
			if v, ok := strings.CutPrefix(f, "cmd="); ok {
				last = v
			}
		}
		if id != "" && (cmd == "" || last == cmd) {
			ids[id] = true
		}
	}
	if len(ids) == 0 && cmd == "" {
		t.Fatalf("no clients in %q", list)
	}
	return ids
}

// A replica's reply settles its request after the worker has moved on
// (Bus.SendReply with SettleDirect). When Redis refuses the reply for a
// while (here: out of memory), the request is not acked: it is delivered
// again, and answered then. (A reply that can never be written is
// dead-lettered instead: TestUnwritableRepliesAreDeadLettered.)
func TestFailedReplyDeliversRequestAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := redistest.Start(redistest.Options{}) // its memory limit changes
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	b, err := bus.NewRedis(bus.RedisConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rdb := b.Client()
	service := meshtest.Name("badreply")
	inbox := bus.ReplyTopic(meshtest.Name("badreply-inbox"))
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: inbox, Values: []any{"hello", "inbox"}}).Err(); err != nil {
		t.Fatal(err)
	}
	msgs := meshtest.SubscribeOneSlot(ctx, t, b, service, true)
	if err := b.SendRequest(ctx, service, &bus.Request{ID: "r1", Function: "f", ReplyTo: inbox}); err != nil {
		t.Fatal(err)
	}
	next := func() (*message.Message, bus.Delivery) { t.Helper(); return meshtest.NextDelivery(ctx, t, msgs) }
	m, d := next()
	// Redis is out of memory: the reply's XADD is refused (OOM).
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.SendReply(ctx, inbox, &bus.Reply{ID: "r1", Payload: []byte(`1`), Acks: m}); err != nil {
		t.Fatalf("SendReply: %v (the failure should come back as a redelivery)", err)
	}
	bus.Ack(m) // the worker's settle: the reply settles it instead
	m2, d2 := next()
	if d2.EntryID != d.EntryID || d2.Count != 2 {
		t.Fatalf("got entry %s delivery %d, want %s delivery 2", d2.EntryID, d2.Count, d.EntryID)
	}
	// Memory is back: the second reply goes through and acks.
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.SendReply(ctx, inbox, &bus.Reply{ID: "r1", Payload: []byte(`1`), Acks: m2}); err != nil {
		t.Fatal(err)
	}
	bus.Ack(m2)
	meshtest.Eventually(t, 10*time.Second, "the request acked", func() bool {
		bl, err := b.Backlog(ctx, service)
		return err == nil && bl.Waiting == 0 && bl.Pending == 0
	})
	if n := rdb.XLen(ctx, inbox).Val(); n != 2 {
		t.Fatalf("reply stream holds %d entries, want the hello and one reply", n)
	}
}
