package bus

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ReplayDeadLetters implements Bus.
func (b *Memory) ReplayDeadLetters(ctx context.Context, service string, ids ...string) (int, error) {
	taken, err := b.takeDead(service, ids)
	if err != nil {
		return 0, err
	}
	for _, d := range taken {
		m := message.NewMessage(d.EntryID, d.Payload)
		for k, v := range replayMessage(d.Fields, d.EntryID) {
			m.Metadata[k] = v
		}
		b.queue(FunctionTopic(service, d.Fields[FieldFunction])).push(&memItem{msg: m, id: b.nextID()})
	}
	return len(taken), nil
}

// PurgeDeadLetters implements Bus.
func (b *Memory) PurgeDeadLetters(ctx context.Context, service string, ids ...string) (int, error) {
	taken, err := b.takeDead(service, ids)
	return len(taken), err
}

// takeDead removes and returns dead letters of service by id (all when
// ids is empty).
func (b *Memory) takeDead(service string, ids []string) ([]DeadLetter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	topic := DeadLetterTopic(service)
	all := b.dead[topic]
	if len(ids) == 0 {
		delete(b.dead, topic)
		return all, nil
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var taken, kept []DeadLetter
	for _, d := range all {
		if want[d.EntryID] {
			taken = append(taken, d)
			delete(want, d.EntryID)
		} else {
			kept = append(kept, d)
		}
	}
	for id := range want {
		return nil, errors.New("bus: no dead letter " + id)
	}
	b.dead[topic] = kept
	return taken, nil
}

// Backlog implements Bus.
func (b *Memory) Backlog(_ context.Context, service string) (Backlog, error) {
	q := b.queue(RequestTopic(service))
	b.mu.Lock()
	limit := b.limits[service]
	b.mu.Unlock()
	return Backlog{Waiting: int64(q.len()), Pending: q.taken.Load(), MaxBacklog: limit.MaxBacklog}, nil
}

// SetLimits implements Bus.
func (b *Memory) SetLimits(_ context.Context, service string, l Limits) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limits[service] = l
	return nil
}

// Idempotency implements Bus.
func (b *Memory) Idempotency() IdempotencyStore { return b.idem }

type memIdem struct {
	mu   sync.Mutex
	keys map[string]memIdemKey
}

type memIdemKey struct {
	owner   string
	done    bool
	result  []byte
	expires time.Time
}

func (s *memIdem) get(k string) (memIdemKey, bool) {
	v, ok := s.keys[k]
	if ok && time.Now().After(v.expires) {
		delete(s.keys, k)
		return v, false
	}
	return v, ok
}

func (s *memIdem) Begin(_ context.Context, service, key, owner string, ttl time.Duration) (IdemState, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := IdempotencyTopic(service, key)
	v, ok := s.get(k)
	switch {
	case !ok:
		s.keys[k] = memIdemKey{owner: owner, expires: time.Now().Add(ttl)}
		return IdemNew, nil, nil
	case v.done:
		return IdemDone, v.result, nil
	case v.owner == owner:
		return IdemMine, nil, nil
	}
	return IdemRunning, nil, nil
}

func (s *memIdem) Complete(_ context.Context, service, key, owner string, result []byte, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[IdempotencyTopic(service, key)] = memIdemKey{owner: owner, done: true, result: result, expires: time.Now().Add(ttl)}
	return nil
}

func (s *memIdem) Release(_ context.Context, service, key, owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := IdempotencyTopic(service, key)
	if v, ok := s.get(k); ok && !v.done && v.owner == owner {
		delete(s.keys, k)
	}
	return nil
}
