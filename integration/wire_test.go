package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/bus/bustest"
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
	service := bustest.Name("killed")
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
