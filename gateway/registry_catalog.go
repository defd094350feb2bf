package gateway

import (
	"context"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/fnmesh/fnmesh/registry"
)

// RegistryCatalog is a Catalog read from the mesh's live registry: the
// functions that live replicas serve, with the JSON Schemas they
// announced (registry.Schema of their Go types). It follows replicas as
// they come and go: the listing is read again once it is older than
// Refresh, and a function it does not list is looked up again, at most
// every Recheck, so a function just deployed is found on its first call.
// Safe for concurrent use.
type RegistryCatalog struct {
	store   registry.Store
	refresh time.Duration
	recheck time.Duration

	mu      sync.Mutex // one read of the registry at a time
	snap    *catalogSnapshot
	snapMu  sync.RWMutex
	timeout time.Duration
}

type catalogSnapshot struct {
	fns   []Function
	index map[string]int
	at    time.Time
}

var _ Catalog = (*RegistryCatalog)(nil)

// NewRegistryCatalog returns a catalog of the registry in store
// (registry.StoreFor of the gateway's bus). Zero durations take the
// defaults: refresh 1s, recheck 100ms.
func NewRegistryCatalog(store registry.Store, refresh, recheck time.Duration) *RegistryCatalog {
	if refresh <= 0 {
		refresh = time.Second
	}
	if recheck <= 0 {
		recheck = 100 * time.Millisecond
	}
	return &RegistryCatalog{store: store, refresh: refresh, recheck: recheck, timeout: 2 * time.Second}
}

// Functions implements Catalog.
func (c *RegistryCatalog) Functions(ctx context.Context) ([]Function, error) {
	s, err := c.current(ctx, c.refresh)
	if err != nil {
		return nil, err
	}
	return append([]Function(nil), s.fns...), nil
}

// Function implements Catalog.
func (c *RegistryCatalog) Function(ctx context.Context, name string) (Function, bool, error) {
	s, err := c.current(ctx, c.refresh)
	if err != nil {
		return Function{}, false, err
	}
	if i, ok := s.index[name]; ok {
		return s.fns[i], true, nil
	}
	// Not listed: a replica may have started since; look again, at most
	// every recheck.
	if s, err = c.current(ctx, c.recheck); err != nil {
		return Function{}, false, err
	}
	if i, ok := s.index[name]; ok {
		return s.fns[i], true, nil
	}
	return Function{}, false, nil
}

// current returns a snapshot at most maxAge old, reading the registry
// when the one held is older. A failed read keeps serving the last
// snapshot, if there is one.
func (c *RegistryCatalog) current(ctx context.Context, maxAge time.Duration) (*catalogSnapshot, error) {
	c.snapMu.RLock()
	s := c.snap
	c.snapMu.RUnlock()
	if s != nil && time.Since(s.at) <= maxAge {
		return s, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snapMu.RLock()
	s = c.snap
	c.snapMu.RUnlock()
	if s != nil && time.Since(s.at) <= maxAge {
		return s, nil // read by a concurrent caller meanwhile
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	fresh, err := c.read(ctx)
	if err != nil {
		if s != nil {
			return s, nil
		}
		return nil, err
	}
	c.snapMu.Lock()
	c.snap = fresh
	c.snapMu.Unlock()
	return fresh, nil
}

func (c *RegistryCatalog) read(ctx context.Context) (*catalogSnapshot, error) {
	services, err := c.store.Services(ctx)
	if err != nil {
		return nil, err
	}
	s := &catalogSnapshot{index: map[string]int{}, at: time.Now()}
	for _, svc := range services {
		view, err := c.store.Service(ctx, svc)
		if err != nil {
			return nil, err
		}
		// The newest replica's schemas: what a rolling upgrade ends with.
		for i := len(view.Replicas) - 1; i >= 0; i-- {
			r := &view.Replicas[i]
			for _, f := range r.Functions {
				name := svc + "." + f.Name
				if _, ok := s.index[name]; ok {
					continue
				}
				s.index[name] = len(s.fns)
				s.fns = append(s.fns, Function{
					Name: name, Request: f.Request, Response: f.Response,
					Public:      f.Access == "public",
					Description: "access: " + f.Access + "; served by " + plural(len(view.Replicas), "live replica"),
				})
			}
		}
	}
	sort.Slice(s.fns, func(i, j int) bool { return s.fns[i].Name < s.fns[j].Name })
	for i, f := range s.fns {
		s.index[f.Name] = i
	}
	return s, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}
