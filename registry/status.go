package registry

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
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
	// record a replica already wrote.
	Queued(ctx context.Context, id, service, function string, ttl time.Duration) error
	// Update records a replica's news of a request: running, done,
	// dead_lettered, or queued again (handed back). A dead_lettered
	// record is final.
	Update(ctx context.Context, s Status, ttl time.Duration) error
	// Get returns the request's status; State is unknown when there is
	// no record.
	Get(ctx context.Context, id string) (Status, error)
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
type RedisStatusStore struct{ rdb redis.UniversalClient }

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

func (s *RedisStatusStore) write(ctx context.Context, id, mode string, ttl time.Duration, fields ...string) error {
	args := make([]any, 0, 2+len(fields))
	args = append(args, mode, ttl.Milliseconds())
	for _, f := range fields {
		args = append(args, f)
	}
	return statusScript.Run(ctx, s.rdb, []string{StatusKey(id)}, args...).Err()
}

func now() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// Queued implements StatusStore: plain commands in MULTI, no script, so
// that a caller's ACL needs only HSETNX, HSET and PEXPIRE on these keys.
func (s *RedisStatusStore) Queued(ctx context.Context, id, service, function string, ttl time.Duration) error {
	key := StatusKey(id)
	pipe := s.rdb.TxPipeline()
	pipe.HSetNX(ctx, key, "state", StateQueued) // a replica's state, if first, stays
	pipe.HSetNX(ctx, key, "updated", now())
	pipe.HSet(ctx, key, "service", service, "function", function)
	pipe.PExpire(ctx, key, ttl)
	_, err := pipe.Exec(ctx)
	return err
}

// Update implements StatusStore.
func (s *RedisStatusStore) Update(ctx context.Context, st Status, ttl time.Duration) error {
	fields := []string{"service", st.Service, "function", st.Function, "updated", now()}
	if st.Replica != "" {
		fields = append(fields, "replica", st.Replica)
	}
	if st.Attempt > 0 {
		fields = append(fields, "attempt", strconv.Itoa(st.Attempt))
	}
	if st.Code != "" {
		fields = append(fields, "code", st.Code, "reason", st.Reason)
	}
	return s.write(ctx, st.ID, st.State, ttl, fields...)
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

func (s *memoryStatus) Get(_ context.Context, id string) (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok || time.Now().After(r.expires) {
		return Status{ID: id, State: StateUnknown}, nil
	}
	return statusFrom(id, r.fields), nil
}
