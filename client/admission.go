package client

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
)

// admission keeps calls and sends off services whose backlog reached the
// bound their replicas published. It reads each target's backlog at most
// once per interval, in the background after the first read, and counts
// what this client added since, so the check costs no round trip per
// call. With several clients the bound is approximate by what they add
// within one interval.
type admission struct {
	bus      bus.Bus
	interval time.Duration
	views    sync.Map // service -> *backlogView
}

// backlogView is what a client knows of one service's backlog. Every
// call reads it, on every core: it takes no lock.
type backlogView struct {
	read       atomic.Pointer[backlogRead] // the last read; nil before the first
	refreshing atomic.Bool
	added      atomic.Int64 // requests this client added since the last read
}

type backlogRead struct {
	backlog bus.Backlog
	at      time.Time
}

func newAdmission(b bus.Bus, interval time.Duration) *admission {
	return &admission{bus: b, interval: interval}
}

// admit returns resource_exhausted when service's backlog is at its bound,
// and otherwise counts a request added to it.
func (a *admission) admit(ctx context.Context, service string) error {
	return a.decide(ctx, service, true)
}

// check is admit for a request that will not wait in the backlog (an
// in-process call): refused as well once the bound is reached, so that it
// does not pass requests waiting there, but not counted.
func (a *admission) check(ctx context.Context, service string) error {
	return a.decide(ctx, service, false)
}

func (a *admission) decide(ctx context.Context, service string, count bool) error {
	if a.interval < 0 {
		return nil
	}
	var v *backlogView
	if got, ok := a.views.Load(service); ok {
		v = got.(*backlogView)
	} else {
		got, _ := a.views.LoadOrStore(service, &backlogView{})
		v = got.(*backlogView)
	}

	r := v.read.Load()
	switch {
	case r == nil:
		// First call to this service: read before deciding.
		a.refresh(ctx, service, v)
		r = v.read.Load()
	case time.Since(r.at) > a.interval && v.refreshing.CompareAndSwap(false, true):
		go a.refresh(context.WithoutCancel(ctx), service, v)
	}
	b := r.backlog
	if b.MaxBacklog > 0 && b.Waiting+v.added.Load() >= b.MaxBacklog {
		return fnmesh.Errorf(fnmesh.CodeResourceExhausted, "service %s has %d requests waiting, its bound is %d", service, b.Waiting+v.added.Load(), b.MaxBacklog)
	}
	if count {
		v.added.Add(1)
	}
	return nil
}

func (a *admission) refresh(ctx context.Context, service string, v *backlogView) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	b, err := a.bus.Backlog(ctx, service)
	defer v.refreshing.Store(false)
	if last := v.read.Load(); err != nil && last != nil {
		b = last.backlog // keep the last view; the transport reports the outage itself
	}
	v.read.Store(&backlogRead{backlog: b, at: time.Now()})
	if err == nil {
		v.added.Store(0)
	}
}
