package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
)

// WatcherConfig configures a Watcher. Zero values take the defaults
// written on each field.
type WatcherConfig struct {
	// Store overrides the store of the bus (StoreFor).
	Store Store
	// Refresh is how often the services a caller uses are read again.
	// Default 1s.
	Refresh time.Duration
	// Recheck is how old a view may be before a call that it would fail
	// reads the service again first (a replica that just started).
	// Default 100ms.
	Recheck time.Duration
	// Forget drops a service from the view once no call asked for it
	// this long. Default 1m.
	Forget time.Duration
	// Logger receives registry read failures. Default slog.Default().
	Logger *slog.Logger
}

func (c *WatcherConfig) setDefaults() {
	if c.Refresh == 0 {
		c.Refresh = time.Second
	}
	if c.Recheck == 0 {
		c.Recheck = 100 * time.Millisecond
	}
	if c.Forget == 0 {
		c.Forget = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Watcher is a caller's cached view of the registry: the functions each
// service it calls serves now and served lately. Services enter the view
// on their first call and are refreshed in the background, by one
// goroutine, every Refresh. Safe for concurrent use.
type Watcher struct {
	cfg      WatcherConfig
	services atomic.Pointer[map[string]*watched] // copied on write
	mu       sync.Mutex                          // serializes writers of services
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	warned   atomic.Int64 // unix ns of the last read-failure log
}

type watched struct {
	name string
	used atomic.Bool // asked for since the last refresh round
	idle int         // refresh rounds without use (refresher only)
	view atomic.Pointer[watchedView]
	mu   sync.Mutex // one read of the store at a time
}

type watchedView struct {
	live    map[string]bool
	known   map[string]bool
	fetched time.Time
	failed  bool // the read failed: let calls through
}

// NewWatcher returns a watcher of b's registry. Close stops it.
func NewWatcher(b bus.Bus, cfg WatcherConfig) (*Watcher, error) {
	cfg.setDefaults()
	if cfg.Refresh < 0 || cfg.Recheck < 0 || cfg.Forget < 0 {
		return nil, errors.New("registry: WatcherConfig durations must not be negative")
	}
	if cfg.Store == nil {
		var err error
		if cfg.Store, err = StoreFor(b); err != nil {
			return nil, err
		}
	}
	w := &Watcher{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	empty := map[string]*watched{}
	w.services.Store(&empty)
	go w.refresher()
	return w, nil
}

// Close stops the background refresh.
func (w *Watcher) Close() error {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	return nil
}

// Check returns nil when a live replica of service serves function (or
// the registry cannot be read), else a not_found or unavailable
// *fnmesh.Error: not_found when the service never served the function
// (or is not in the registry at all), unavailable when it did lately but
// no replica that serves it is alive. A send (queued, async true) to a
// function served lately passes even with no live replica: it waits in
// the service's stream for the next replica (scale from zero).
//
// It reads the registry only when the service is not in the view yet
// (the first call waits for that read) or when the view would fail the
// call and is older than Recheck (a replica that just started); every
// other call is answered from the view.
func (w *Watcher) Check(ctx context.Context, service, function string, async bool) error {
	s := (*w.services.Load())[service]
	if s != nil {
		if !s.used.Load() {
			s.used.Store(true)
		}
		if v := s.view.Load(); v != nil && v.passes(function, async) {
			return nil
		}
	} else {
		s = w.add(service)
	}
	v := s.view.Load()
	if v == nil || time.Since(v.fetched) > w.cfg.Recheck {
		v = w.fetch(ctx, s)
	}
	switch {
	case v.passes(function, async):
		return nil
	case v.known[function]:
		return fnmesh.Errorf(fnmesh.CodeUnavailable, "no live replica of service %s serves %s (it did lately)", service, function)
	case len(v.live) == 0 && len(v.known) == 0:
		return fnmesh.Errorf(fnmesh.CodeNotFound, "service %s is not in the registry: no replica of it ran lately", service)
	}
	return fnmesh.Errorf(fnmesh.CodeNotFound, "service %s has no function %s (it serves %s)", service, function, strings.Join(keys(v.live), ", "))
}

func (v *watchedView) passes(function string, async bool) bool {
	return v.failed || v.live[function] || (async && v.known[function])
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}

// maxWatched bounds the view: past it, services nobody has heard of are
// dropped first, so callers naming ever new services cannot grow it.
const maxWatched = 4096

func (w *Watcher) add(service string) *watched {
	w.mu.Lock()
	defer w.mu.Unlock()
	cur := *w.services.Load()
	if s := cur[service]; s != nil {
		return s
	}
	next := make(map[string]*watched, len(cur)+1)
	for k, v := range cur {
		if len(cur) >= maxWatched {
			if v := v.view.Load(); v != nil && !v.failed && len(v.live) == 0 && len(v.known) == 0 {
				continue
			}
		}
		next[k] = v
	}
	s := &watched{name: service}
	s.used.Store(true)
	next[service] = s
	w.services.Store(&next)
	return s
}

// fetch reads the service from the store, unless a concurrent fetch just
// did.
func (w *Watcher) fetch(ctx context.Context, s *watched) *watchedView {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v := s.view.Load(); v != nil && time.Since(v.fetched) <= w.cfg.Recheck {
		return v
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	view, err := w.cfg.Store.Service(ctx, s.name)
	v := &watchedView{live: map[string]bool{}, known: map[string]bool{}, fetched: time.Now()}
	if err != nil {
		v.failed = true
		if last := w.warned.Load(); time.Since(time.Unix(0, last)) > time.Minute && w.warned.CompareAndSwap(last, time.Now().UnixNano()) {
			w.cfg.Logger.Warn("registry: cannot read; calls are not checked until it can be", "service", s.name, "err", err)
		}
	} else {
		for _, f := range view.Functions() {
			v.live[f] = true
		}
		for _, f := range view.Known {
			v.known[f] = true
		}
	}
	s.view.Store(v)
	return v
}

func (w *Watcher) refresher() {
	defer close(w.done)
	t := time.NewTicker(w.cfg.Refresh)
	defer t.Stop()
	forgetAfter := int(w.cfg.Forget / w.cfg.Refresh)
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		var drop []string
		for name, s := range *w.services.Load() {
			if s.used.Swap(false) {
				s.idle = 0
			} else if s.idle++; s.idle > forgetAfter {
				drop = append(drop, name)
				continue
			}
			w.fetch(context.Background(), s)
		}
		if len(drop) > 0 {
			w.forget(drop)
		}
	}
}

func (w *Watcher) forget(names []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	cur := *w.services.Load()
	next := make(map[string]*watched, len(cur))
	for k, v := range cur {
		next[k] = v
	}
	for _, n := range names {
		delete(next, n)
	}
	w.services.Store(&next)
}

// Watching returns the services in the view (for tests and tools).
func (w *Watcher) Watching() int { return len(*w.services.Load()) }

// String describes the watcher for logs.
func (w *Watcher) String() string {
	return fmt.Sprintf("registry.Watcher(%d services, refresh %v)", w.Watching(), w.cfg.Refresh)
}
