package integration

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// A status record on Redis keeps its rules whoever writes it and in
// whatever order the writes land: a caller's queued never overwrites a
// replica's record, dead_lettered is final, and the record is JSON at
// StatusKey that expires TTL after its last change. A record left as a
// hash (the layout of earlier releases) is read, and a replica's news
// replaces it.
func TestStatusRecordRulesOnRedis(t *testing.T) {
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	caller, replicaA, replicaB := registry.NewRedisStatusStore(b.Client()), registry.NewRedisStatusStore(b.Client()), registry.NewRedisStatusStore(b.Client())
	rdb := inspector(t)
	const ttl = time.Minute
	flush := func(s *registry.RedisStatusStore) {
		t.Helper()
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if n := s.Dropped(); n != 0 {
			t.Fatalf("%d records dropped", n)
		}
	}
	update := func(s *registry.RedisStatusStore, id, state string) {
		t.Helper()
		st := registry.Status{ID: id, State: state, Service: "math", Function: "add", Replica: "r1", Attempt: 2}
		if state == registry.StateDeadLettered {
			st.Code, st.Reason = "invalid_argument", `refused: "n" < 0`
		}
		if err := s.Update(ctx, st, ttl); err != nil {
			t.Fatal(err)
		}
		flush(s)
	}
	queued := func(id string) {
		t.Helper()
		if err := caller.Queued(ctx, id, "math", "add", ttl); err != nil {
			t.Fatal(err)
		}
		flush(caller)
	}
	get := func(id string) registry.Status {
		t.Helper()
		st, err := caller.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	// Queued, then run by a replica: done, with the replica's fields.
	id := meshtest.Name("st")
	queued(id)
	if st := get(id); st.State != registry.StateQueued || st.Service != "math" || st.Function != "add" || st.Updated.IsZero() {
		t.Fatalf("queued record read as %+v", st)
	}
	update(replicaA, id, registry.StateDone)
	if st := get(id); st.State != registry.StateDone || st.Replica != "r1" || st.Attempt != 2 {
		t.Fatalf("done record read as %+v", st)
	}
	var rec map[string]any
	raw, err := rdb.Get(ctx, registry.StatusKey(id)).Bytes()
	if err != nil || json.Unmarshal(raw, &rec) != nil || rec["state"] != registry.StateDone {
		t.Fatalf("record at %s is %q (%v), want JSON with state done", registry.StatusKey(id), raw, err)
	}
	if pttl, err := rdb.PTTL(ctx, registry.StatusKey(id)).Result(); err != nil || pttl <= 0 || pttl > ttl {
		t.Fatalf("record's TTL %v (%v), want at most %v", pttl, err, ttl)
	}

	// A replica's record landed first: the caller's queued leaves it.
	id = meshtest.Name("st")
	update(replicaA, id, registry.StateRunning)
	queued(id)
	if st := get(id); st.State != registry.StateRunning {
		t.Fatalf("caller's queued overwrote a running record: %+v", st)
	}

	// Dead-lettered by one replica: a late done from another and a
	// caller's queued leave it, reason and all.
	id = meshtest.Name("st")
	update(replicaA, id, registry.StateDeadLettered)
	update(replicaB, id, registry.StateDone)
	update(replicaB, id, registry.StateRunning)
	queued(id)
	if st := get(id); st.State != registry.StateDeadLettered || st.Code != "invalid_argument" || st.Reason != `refused: "n" < 0` {
		t.Fatalf("dead_lettered record overwritten: %+v", st)
	}
	if pttl, err := rdb.PTTL(ctx, registry.StatusKey(id)).Result(); err != nil || pttl <= 0 || pttl > ttl {
		t.Fatalf("dead_lettered record's TTL %v (%v), want at most %v", pttl, err, ttl)
	}

	// A hash record is read; a replica's record replaces it.
	id = meshtest.Name("st")
	if err := rdb.HSet(ctx, registry.StatusKey(id), "state", "queued", "service", "math", "function", "add", "updated", "1764644000123").Err(); err != nil {
		t.Fatal(err)
	}
	rdb.PExpire(ctx, registry.StatusKey(id), ttl)
	if st := get(id); st.State != registry.StateQueued || st.Function != "add" || st.Updated.UnixMilli() != 1764644000123 {
		t.Fatalf("hash record read as %+v", st)
	}
	update(replicaB, id, registry.StateDone)
	if st := get(id); st.State != registry.StateDone || st.Replica != "r1" {
		t.Fatalf("replica's record over a hash read as %+v", st)
	}

	if st := get(meshtest.Name("none")); st.State != registry.StateUnknown {
		t.Fatalf("no record read as %+v", st)
	}
}
