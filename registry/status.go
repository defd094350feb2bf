package registry

import (
	"context"
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

// StatusKey is the Redis key of a request's status record (a hash).
func StatusKey(id string) string { return "fnmesh:status:{" + id + "}" }

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
// background, in batches of one round trip each (MULTI/EXEC per slot), in
// the order they were made. A send then costs no round trip of its own
// for its record, and a replica none for each state it reports; a record
// lands a round trip or so after the news it carries. At most
// maxStatusBacklog records wait; beyond that, and when a batch fails, they
// are dropped (a status record never fails or slows a request) and
// counted in Dropped.
type RedisStatusStore struct {
	rdb redis.UniversalClient

	mu      sync.Mutex
	backlog []*statusWrite
	waiting map[string]*statusWrite // the records in backlog, by request id
	dropped atomic.Uint64
	ended   chan struct{} // while a writer goroutine runs (until backlog is empty): closed when it ends
}

// statusWrite is one record to write: Queued's (queued) or Update's.
type statusWrite struct {
	id, service, function string
	queued                bool
	st                    Status
	ttl                   time.Duration
	at                    time.Time
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

// statusScript writes a record: ARGV mode ("queued" sets the state only
// if none is set; others overwrite it unless it is dead_lettered),
// ttl ms, then field/value pairs.
var statusScript = redis.NewScript(`
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'dead_lettered' then return 0 end
if ARGV[1] == 'queued' then
  if not state then redis.call('HSET', KEYS[1], 'state', 'queued') end
else
  redis.call('HSET', KEYS[1], 'state', ARGV[1])
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

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

// Dropped is how many records were dropped: backlog full, or their batch
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
		if err := s.writeBatch(batch); err != nil {
			s.dropped.Add(uint64(len(batch)))
		}
	}
}

// writeBatch writes records in one round trip: a caller's queued records
// with plain commands (its ACL allows HSETNX, HSET and PEXPIRE, no
// scripts), a replica's with statusScript by its hash, or whole when
// Redis does not have it (the replica ACL has EVAL, not SCRIPT LOAD).
func (s *RedisStatusStore) writeBatch(batch []statusWrite) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	run := func(whole bool) ([]redis.Cmder, error) {
		return s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := range batch {
				w := &batch[i]
				key := StatusKey(w.id)
				updated := strconv.FormatInt(w.at.UnixMilli(), 10)
				if w.queued {
					pipe.HSetNX(ctx, key, "state", StateQueued) // a replica's state, if first, stays
					pipe.HSetNX(ctx, key, "updated", updated)
					pipe.HSet(ctx, key, "service", w.service, "function", w.function)
					pipe.PExpire(ctx, key, w.ttl)
					continue
				}
				if whole {
					statusScript.Eval(ctx, pipe, []string{key}, updateArgs(w.st, w.ttl, updated)...)
				} else {
					statusScript.EvalSha(ctx, pipe, []string{key}, updateArgs(w.st, w.ttl, updated)...)
				}
			}
			return nil
		})
	}
	cmds, err := run(false)
	if err != nil && noScript(cmds) {
		_, err = run(true) // loads it, for the next batches
	}
	return err
}

func noScript(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

func updateArgs(st Status, ttl time.Duration, updated string) []any {
	args := []any{st.State, ttl.Milliseconds(), "service", st.Service, "function", st.Function, "updated", updated}
	if st.Replica != "" {
		args = append(args, "replica", st.Replica)
	}
	if st.Attempt > 0 {
		args = append(args, "attempt", strconv.Itoa(st.Attempt))
	}
	if st.Code != "" {
		args = append(args, "code", st.Code, "reason", st.Reason)
	}
	return args
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
	m, err := s.rdb.HGetAll(ctx, StatusKey(id)).Result()
	if err != nil {
		return Status{}, err
	}
	return statusFrom(id, m), nil
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
