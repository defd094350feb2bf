package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
)

// States of a sent request, as a status record tells them.
const (
	StateUnknown      = "unknown"       // no record: never sent, sent as a call, or expired
	StateQueued       = "queued"        // stored, waiting for a replica
	StateRunning      = "running"       // a replica runs it (Status.Replica)
	StateDone         = "done"          // ran to success
	StateDeadLettered = "dead_lettered" // failed for good (Status.Code, Reason)
)

// DefaultStatusTTL is how long a status record outlives its last change
// unless configured otherwise.
const DefaultStatusTTL = 10 * time.Minute

// Status is where a sent request stands.
type Status struct {
	ID       string    `json:"id"`
	State    string    `json:"state"`
	Service  string    `json:"service,omitempty"`
	Function string    `json:"function,omitempty"`
	Replica  string    `json:"replica,omitempty"` // running or last ran it
	Attempt  int       `json:"attempt,omitempty"`
	Code     string    `json:"code,omitempty"`   // dead_lettered: the error's code
	Reason   string    `json:"reason,omitempty"` // dead_lettered: why
	Updated  time.Time `json:"updated,omitzero"`
}

// StatusStore keeps one small record per sent request, each expiring
// ttl after its last change: Redis holds at most send rate × ttl of
// them, whatever the number of sends.
type StatusStore interface {
	// Queued records a request just stored; it does not overwrite a
	// record a replica already wrote. The Redis store writes it in the
	// background, a round trip or so later.
	Queued(ctx context.Context, id, service, function string, ttl time.Duration) error
	// Update records a replica's news of a request: running, done,
	// dead_lettered, or queued again (handed back). A dead_lettered
	// record is final.
	Update(ctx context.Context, s Status, ttl time.Duration) error
	// Get returns the request's status; State is unknown when there is
	// no record.
	Get(ctx context.Context, id string) (Status, error)
	// Flush waits until the records made before it are written (or
	// dropped), or ctx ends: a process calls it before it exits.
	Flush(ctx context.Context) error
}

// StatusKey is the Redis key of a request's status record: a string,
// the record as JSON (docs/PROTOCOL.md §15).
func StatusKey(id string) string { return statusKeyPrefix + id + "}" }

const statusKeyPrefix = "fnmesh:status:{"

// StatusStoreFor returns the status store that lives with b.
func StatusStoreFor(b bus.Bus) (StatusStore, error) {
	switch x := b.(type) {
	case *bus.Redis:
		return NewRedisStatusStore(x.Client()), nil
	case *bus.Memory:
		return memoryStatusFor(x), nil
	}
	return nil, fmt.Errorf("%w: %T", ErrNoStore, b)
}

// RedisStatusStore keeps status records on Redis (see StatusKey).
//
// Queued and Update return at once: their records are written in the
// background, in batches of one round trip each (one SET per record,
// pipelined), in the order they were made. A send then costs no round
// trip of its own for its record, and a replica none for each state it
// reports; a record lands a round trip or so after the news it carries.
// At most maxStatusBacklog records wait; beyond that, and when a write
// fails, they are dropped (a status record never fails or slows a
// request) and counted in Dropped.
type RedisStatusStore struct {
	rdb redis.UniversalClient

	mu      sync.Mutex
	backlog []*statusWrite
	waiting map[string]*statusWrite // the records in backlog, by request id
	dropped atomic.Uint64
	ended   chan struct{} // while a writer goroutine runs (until backlog is empty): closed when it ends
	buf     []byte        // the writer's: keys and records of a batch
}

// statusWrite is one record to write: Queued's (queued) or Update's.
type statusWrite struct {
	id, service, function string
	queued                bool
	st                    Status
	ttl                   time.Duration
	at                    time.Time
	old                   string // writeBatch: a dead_lettered record to put back
}

// maxStatusBacklog bounds the records waiting to be written.
const maxStatusBacklog = 16384

// maxStatusBatch bounds the records written in one round trip.
const maxStatusBatch = 512

// statusLinger is how long the writer lets records gather before a batch.
const statusLinger = time.Millisecond

// merge folds later news of the same request into w, not yet written:
// a replica's state replaces a caller's queued (which never overwrites
// one), dead_lettered is final, otherwise the later state wins.
func (w *statusWrite) merge(later statusWrite) {
	switch {
	case later.queued && !w.queued:
		return // the replica's record, already here, stays
	case !w.queued && w.st.State == StateDeadLettered:
		return
	}
	*w = later
}

// NewRedisStatusStore returns the status store on rdb.
func NewRedisStatusStore(rdb redis.UniversalClient) *RedisStatusStore {
	return &RedisStatusStore{rdb: rdb}
}

// enqueue adds w to the backlog and starts the writer if none runs.
func (s *RedisStatusStore) enqueue(w statusWrite) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.waiting[w.id]; p != nil {
		// News of a request whose last record is not written yet: one
		// write carries both (a quick send's running and done, one
		// round trip of records later, are one).
		p.merge(w)
		return nil
	}
	if len(s.backlog) >= maxStatusBacklog {
		s.dropped.Add(1)
		return ErrStatusBacklogFull
	}
	if s.waiting == nil {
		s.waiting = map[string]*statusWrite{}
	}
	rec := &w
	s.backlog = append(s.backlog, rec)
	s.waiting[w.id] = rec
	if s.ended == nil {
		s.ended = make(chan struct{})
		go s.writeLoop(s.ended)
	}
	return nil
}

// ErrStatusBacklogFull: a status record was dropped, too many waited to
// be written.
var ErrStatusBacklogFull = errors.New("registry: status records back up; record dropped")

// Dropped is how many records were dropped: backlog full, or their write
// failed.
func (s *RedisStatusStore) Dropped() uint64 { return s.dropped.Load() }

// Flush implements StatusStore.
func (s *RedisStatusStore) Flush(ctx context.Context) error {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if ended == nil {
		return nil
	}
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeLoop writes batches until the backlog is empty, then ends: no
// goroutine waits while nothing is sent.
func (s *RedisStatusStore) writeLoop(ended chan struct{}) {
	var batch []statusWrite
	for {
		// Let news gather for a moment: more records per round trip,
		// and those of one request merged.
		time.Sleep(statusLinger)
		s.mu.Lock()
		n := min(len(s.backlog), maxStatusBatch)
		if n == 0 {
			s.ended = nil
			s.backlog = nil
			close(ended)
			s.mu.Unlock()
			return
		}
		batch = batch[:0]
		for _, w := range s.backlog[:n] {
			batch = append(batch, *w)
			delete(s.waiting, w.id)
		}
		s.backlog = s.backlog[n:]
		s.mu.Unlock()
		s.dropped.Add(uint64(s.writeBatch(batch)))
	}
}

// statusRecord is a status record as Redis holds it: JSON, the value of
// the string at StatusKey.
type statusRecord struct {
	State    string `json:"state"`
	Service  string `json:"service,omitempty"`
	Function string `json:"function,omitempty"`
	Replica  string `json:"replica,omitempty"`
	Attempt  int    `json:"attempt,omitempty"`
	Code     string `json:"code,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Updated  int64  `json:"updated"` // Unix ms
}

// appendRecord appends w's record to dst, as statusRecord marshals.
func (w *statusWrite) appendRecord(dst []byte) []byte {
	r := w.st
	if w.queued {
		r = Status{State: StateQueued, Service: w.service, Function: w.function}
	}
	dst = append(dst, `{"state":`...)
	dst = appendJSONString(dst, r.State)
	for _, f := range [...]struct{ name, v string }{
		{`,"service":`, r.Service}, {`,"function":`, r.Function}, {`,"replica":`, r.Replica},
	} {
		if f.v != "" {
			dst = appendJSONString(append(dst, f.name...), f.v)
		}
	}
	if r.Attempt != 0 {
		dst = strconv.AppendInt(append(dst, `,"attempt":`...), int64(r.Attempt), 10)
	}
	if r.Code != "" {
		dst = appendJSONString(append(dst, `,"code":`...), r.Code)
	}
	if r.Reason != "" {
		dst = appendJSONString(append(dst, `,"reason":`...), r.Reason)
	}
	dst = strconv.AppendInt(append(dst, `,"updated":`...), w.at.UnixMilli(), 10)
	return append(dst, '}')
}

// appendJSONString appends v as a JSON string.
func appendJSONString(dst []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b, _ := json.Marshal(v) // a string: cannot fail
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, v...)
	return append(dst, '"')
}

// writeBatch writes records in one round trip, one command each: a
// caller's queued with SET NX (a replica's record, if first, stays), a
// replica's with SET GET; one that replaced a dead_lettered record puts
// it back (dead_lettered is final), in a second round trip.
func (s *RedisStatusStore) writeBatch(batch []statusWrite) (dropped int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Keys and records of the batch, back to back in one buffer.
	s.buf = s.buf[:0]
	ends := make([]int, 0, 2*len(batch))
	for i := range batch {
		s.buf = append(append(s.buf, statusKeyPrefix...), batch[i].id...)
		s.buf = append(s.buf, '}')
		ends = append(ends, len(s.buf))
		s.buf = batch[i].appendRecord(s.buf)
		ends = append(ends, len(s.buf))
	}
	cmds, _ := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		start := 0
		var ttl time.Duration
		var px any // ttl in ms, boxed once for the records that share it
		for i := range batch {
			w := &batch[i]
			key, rec := s.buf[start:ends[2*i]], s.buf[ends[2*i]:ends[2*i+1]]
			start = ends[2*i+1]
			if px == nil || w.ttl != ttl {
				ttl, px = w.ttl, w.ttl.Milliseconds()
			}
			mode := "get"
			if w.queued {
				mode = "nx"
			}
			pipe.Do(ctx, "set", key, rec, "px", px, mode)
		}
		return nil
	})
	if len(cmds) < len(batch) {
		return len(batch)
	}
	var again []statusWrite // to write over what SET found
	for i, c := range cmds {
		w := &batch[i]
		old, err := c.(*redis.Cmd).Text()
		switch {
		case errors.Is(err, redis.Nil): // NX found a record, or GET none
		case err != nil && !w.queued && strings.HasPrefix(err.Error(), "WRONGTYPE"):
			// A hash, as releases before this layout wrote records: the
			// replica's record replaces it.
			again = append(again, statusWrite{id: w.id, ttl: w.ttl, old: string(s.buf[ends[2*i]:ends[2*i+1]])})
		case err != nil:
			dropped++
		case !w.queued && strings.Contains(old, StateDeadLettered):
			if r, err := parseRecord([]byte(old)); err == nil && r.State == StateDeadLettered {
				again = append(again, statusWrite{id: w.id, ttl: w.ttl, old: old}) // final: put it back
			}
		}
	}
	if len(again) > 0 {
		cmds, _ := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, w := range again {
				pipe.Set(ctx, StatusKey(w.id), w.old, w.ttl)
			}
			return nil
		})
		for _, c := range cmds {
			if c.Err() != nil {
				dropped++
			}
		}
	}
	if cap(s.buf) > 1<<20 {
		s.buf = nil // a batch of long reasons: not kept
	}
	return dropped
}

func now() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// Queued implements StatusStore; the record is written in the background.
func (s *RedisStatusStore) Queued(_ context.Context, id, service, function string, ttl time.Duration) error {
	return s.enqueue(statusWrite{id: id, service: service, function: function, queued: true, ttl: ttl, at: time.Now()})
}

// Update implements StatusStore; the record is written in the background.
func (s *RedisStatusStore) Update(_ context.Context, st Status, ttl time.Duration) error {
	return s.enqueue(statusWrite{id: st.ID, st: st, ttl: ttl, at: time.Now()})
}

// Get implements StatusStore.
func (s *RedisStatusStore) Get(ctx context.Context, id string) (Status, error) {
	v, err := s.rdb.Get(ctx, StatusKey(id)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return Status{ID: id, State: StateUnknown}, nil
	case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
		// A hash: the fields of a record as releases before this layout
		// wrote them.
		m, err := s.rdb.HGetAll(ctx, StatusKey(id)).Result()
		if err != nil {
			return Status{}, err
		}
		return statusFrom(id, m), nil
	case err != nil:
		return Status{}, err
	}
	r, err := parseRecord(v)
	if err != nil {
		return Status{}, fmt.Errorf("registry: status record of %q: %w", id, err)
	}
	r.ID = id
	return r, nil
}

// parseRecord reads a record as appendRecord writes it.
func parseRecord(v []byte) (Status, error) {
	var r statusRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return Status{}, err
	}
	st := Status{State: r.State, Service: r.Service, Function: r.Function, Replica: r.Replica,
		Attempt: r.Attempt, Code: r.Code, Reason: r.Reason}
	if st.State == "" {
		st.State = StateUnknown
	}
	if r.Updated > 0 {
		st.Updated = time.UnixMilli(r.Updated).UTC()
	}
	return st, nil
}

func statusFrom(id string, m map[string]string) Status {
	st := Status{ID: id, State: m["state"], Service: m["service"], Function: m["function"],
		Replica: m["replica"], Code: m["code"], Reason: m["reason"]}
	if st.State == "" {
		st.State = StateUnknown
	}
	st.Attempt, _ = strconv.Atoi(m["attempt"])
	if ms, err := strconv.ParseInt(m["updated"], 10, 64); err == nil {
		st.Updated = time.UnixMilli(ms).UTC()
	}
	return st
}

// memoryStatus is the status store of a bus.Memory.
type memoryStatus struct {
	mu     sync.Mutex
	recs   map[string]memStatusRec
	pruned time.Time
}

type memStatusRec struct {
	fields  map[string]string
	expires time.Time
}

var memoryStatuses sync.Map // weak.Pointer[bus.Memory] -> *memoryStatus

func memoryStatusFor(b *bus.Memory) *memoryStatus {
	key := weak.Make(b)
	if s, ok := memoryStatuses.Load(key); ok {
		return s.(*memoryStatus)
	}
	s, loaded := memoryStatuses.LoadOrStore(key, &memoryStatus{recs: map[string]memStatusRec{}})
	if !loaded {
		runtime.AddCleanup(b, func(k weak.Pointer[bus.Memory]) { memoryStatuses.Delete(k) }, key)
	}
	return s.(*memoryStatus)
}

func (s *memoryStatus) write(id, mode string, ttl time.Duration, fields ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := time.Now()
	if t.Sub(s.pruned) > time.Second { // expire as Redis would: bounded by rate × ttl
		s.pruned = t
		for k, r := range s.recs {
			if t.After(r.expires) {
				delete(s.recs, k)
			}
		}
	}
	r, ok := s.recs[id]
	if !ok {
		r = memStatusRec{fields: map[string]string{}}
	}
	if r.fields["state"] == StateDeadLettered {
		return
	}
	if mode != StateQueued || r.fields["state"] == "" {
		r.fields["state"] = mode
	}
	for i := 0; i+1 < len(fields); i += 2 {
		r.fields[fields[i]] = fields[i+1]
	}
	r.expires = t.Add(ttl)
	s.recs[id] = r
}

func (s *memoryStatus) Queued(_ context.Context, id, service, function string, ttl time.Duration) error {
	s.write(id, StateQueued, ttl, "service", service, "function", function, "updated", now())
	return nil
}

func (s *memoryStatus) Update(_ context.Context, st Status, ttl time.Duration) error {
	fields := []string{"service", st.Service, "function", st.Function, "updated", now(), "replica", st.Replica, "attempt", strconv.Itoa(st.Attempt)}
	if st.Code != "" {
		fields = append(fields, "code", st.Code, "reason", st.Reason)
	}
	s.write(st.ID, st.State, ttl, fields...)
	return nil
}

// Flush implements StatusStore: records are written as they are made.
func (s *memoryStatus) Flush(context.Context) error { return nil }

func (s *memoryStatus) Get(_ context.Context, id string) (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok || time.Now().After(r.expires) {
		return Status{ID: id, State: StateUnknown}, nil
	}
	return statusFrom(id, r.fields), nil
}
