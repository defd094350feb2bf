package registry

import (
	"context"
	"encoding/json"
	"runtime"
	"sort"
	"sync"
	"time"
	"weak"

	"github.com/fnmesh/fnmesh/bus"
)

// memoryStores holds one store per in-memory bus, for as long as the bus
// lives (keyed weakly: a collected bus takes its registry with it).
var memoryStores sync.Map // weak.Pointer[bus.Memory] -> *memoryStore

func memoryStoreFor(b *bus.Memory) *memoryStore {
	key := weak.Make(b)
	if s, ok := memoryStores.Load(key); ok {
		return s.(*memoryStore)
	}
	s, loaded := memoryStores.LoadOrStore(key, &memoryStore{bus: key, services: map[string]*memService{}})
	if !loaded {
		runtime.AddCleanup(b, func(k weak.Pointer[bus.Memory]) { memoryStores.Delete(k) }, key)
	}
	return s.(*memoryStore)
}

// NewMemoryStore returns a registry store of its own, not tied to a bus
// (its Queue reports pending runs only). For tests and tools.
func NewMemoryStore() Store { return &memoryStore{services: map[string]*memService{}} }

// memoryStore is the registry of one bus.Memory, with the semantics of
// the Redis store: records expire unless heartbeated, heartbeats prune.
type memoryStore struct {
	bus      weak.Pointer[bus.Memory]
	mu       sync.Mutex
	services map[string]*memService
}

type memService struct {
	replicas map[string]*memReplica
	known    map[string]time.Time
	seen     time.Time
}

type memReplica struct {
	record  []byte // JSON, as on Redis: readers get copies
	expires time.Time
	stats   []byte
}

func (s *memoryStore) service(name string) *memService {
	sv := s.services[name]
	if sv == nil {
		sv = &memService{replicas: map[string]*memReplica{}, known: map[string]time.Time{}}
		s.services[name] = sv
	}
	return sv
}

// prune drops expired replicas and forgotten functions and services.
func (s *memoryStore) prune(now time.Time, keep time.Duration) {
	for name, sv := range s.services {
		for id, r := range sv.replicas {
			if !r.expires.After(now) {
				delete(sv.replicas, id)
			}
		}
		for fn, at := range sv.known {
			if now.Sub(at) > keep {
				delete(sv.known, fn)
			}
		}
		if now.Sub(sv.seen) > keep {
			delete(s.services, name)
		}
	}
}

func (s *memoryStore) Announce(_ context.Context, r *Replica, ttl, keep time.Duration) error {
	rec, err := json.Marshal(r)
	if err != nil {
		return err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.service(r.Service)
	sv.replicas[r.ID] = &memReplica{record: rec, expires: now.Add(ttl)}
	for _, f := range r.Functions {
		sv.known[f.Name] = now
	}
	sv.seen = now
	s.prune(now, keep)
	return nil
}

func (s *memoryStore) Heartbeat(_ context.Context, service, id string, functions []string, stats Stats, ttl, keep time.Duration) (bool, error) {
	st, err := json.Marshal(stats)
	if err != nil {
		return false, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sv := s.services[service]
	if sv == nil || sv.replicas[id] == nil || !sv.replicas[id].expires.After(now) {
		return false, nil
	}
	r := sv.replicas[id]
	r.expires, r.stats = now.Add(ttl), st
	for _, f := range functions {
		sv.known[f] = now
	}
	sv.seen = now
	s.prune(now, keep)
	return true, nil
}

func (s *memoryStore) Leave(_ context.Context, service, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sv := s.services[service]; sv != nil {
		delete(sv.replicas, id)
	}
	return nil
}

func (s *memoryStore) Services(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.services))
	for name := range s.services {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func (s *memoryStore) Service(_ context.Context, name string) (*ServiceView, error) {
	now := time.Now()
	v := &ServiceView{Name: name}
	s.mu.Lock()
	sv := s.services[name]
	type raw struct {
		rec, stats []byte
		expires    time.Time
	}
	var live []raw
	if sv != nil {
		for _, r := range sv.replicas {
			if r.expires.After(now) {
				live = append(live, raw{r.record, r.stats, r.expires})
			}
		}
		for fn := range sv.known {
			v.Known = append(v.Known, fn)
		}
	}
	s.mu.Unlock()
	for _, r := range live {
		var rep Replica
		if err := json.Unmarshal(r.rec, &rep); err != nil {
			continue
		}
		if r.stats != nil {
			json.Unmarshal(r.stats, &rep.Stats)
		}
		rep.Expires = r.expires
		v.Replicas = append(v.Replicas, rep)
	}
	sortReplicas(v.Replicas)
	sort.Strings(v.Known)
	return v, nil
}

// Queue reads the bus's queue of the service: its request stream's
// waiting and pending requests (the in-memory bus does not report those
// of versioned functions' streams) and its dead letters.
func (s *memoryStore) Queue(ctx context.Context, service string) (Queue, error) {
	var q Queue
	b := s.bus.Value()
	if b == nil {
		// No bus (NewMemoryStore), or it is gone: what replicas report.
		v, _ := s.Service(ctx, service)
		for _, r := range v.Replicas {
			for _, fs := range r.Stats.Functions {
				q.Pending += fs.InFlight
			}
		}
		return q, nil
	}
	bl, err := b.Backlog(ctx, service)
	if err != nil {
		return q, err
	}
	q.Backlog, q.Pending = bl.Waiting, bl.Pending
	dl, err := b.DeadLetters(ctx, service, 0)
	if err != nil {
		return q, err
	}
	q.DeadLetters = int64(len(dl))
	return q, nil
}

// RecordCount returns how many replica records, live or expired but not
// yet pruned, the store holds for service (for leak tests).
func (s *memoryStore) RecordCount(_ context.Context, service string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sv := s.services[service]; sv != nil {
		return len(sv.replicas), nil
	}
	return 0, nil
}
