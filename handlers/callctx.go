package handlers

import (
	"context"
	"errors"
	"sync"
	"time"
)

// callContext is the context a function runs in: the replica's context
// (cancelled when a drain times out), the call's deadline and its
// CallInfo. context.WithDeadline would start a timer for every call and
// context.WithValue box the CallInfo, four allocations and two changes
// of the runtime's timer heap per call; most functions never wait on
// their context, so here the timer starts only when someone asks for
// Done. Err reports the deadline as soon as it has passed either way.
type callContext struct {
	parent context.Context
	caller context.Context // nil, or an inline call's caller: its cancellation (not its values) ends the call
	req    *Request        // for Info and its Deadline (zero: the parent's); its fields do not change during a run

	done    chan struct{} // made by Done
	stop    func()        // stops what Done started
	mu      sync.Mutex
	attempt int32 // req.Attempt when the run began
	ended   ended // why c ended, once it has; under mu
}

// ended is why a callContext ended: its Err, one of the two a context
// reports, kept in a byte (the context is part of every request).
type ended uint8

const (
	running ended = iota
	endedCanceled
	endedDeadline
)

func endedBy(err error) ended {
	if errors.Is(err, context.DeadlineExceeded) {
		return endedDeadline
	}
	return endedCanceled
}

func (e ended) err() error {
	switch e {
	case endedDeadline:
		return context.DeadlineExceeded
	case endedCanceled:
		return context.Canceled
	}
	return nil
}

func newCallContext(parent context.Context, req *Request) *callContext {
	c := new(callContext)
	c.init(parent, req)
	return c
}

// init sets up a callContext that was never used, for a run of req.
func (c *callContext) init(parent context.Context, req *Request) {
	c.parent, c.req, c.attempt = parent, req, int32(req.Attempt)
}

// own reports whether c ends by itself (a deadline, a caller), not only
// with its parent.
func (c *callContext) own() bool { return !c.req.Deadline.IsZero() || c.caller != nil }

// info is the CallInfo of the run.
func (c *callContext) info() CallInfo {
	r := c.req
	return CallInfo{
		Service: r.Service, Function: r.Function, RequestID: r.ID, Caller: r.Caller,
		Replica: r.Replica, Async: r.Async, Attempt: int(c.attempt), IdempotencyKey: r.IdempotencyKey,
	}
}

func (c *callContext) Deadline() (time.Time, bool) {
	pd, ok := c.parent.Deadline()
	if c.req.Deadline.IsZero() || ok && pd.Before(c.req.Deadline) {
		return pd, ok
	}
	return c.req.Deadline, true
}

func (c *callContext) Value(key any) any {
	if key == (callInfoKey{}) {
		info := c.info()
		return &info
	}
	return c.parent.Value(key)
}

func (c *callContext) Done() <-chan struct{} {
	if !c.own() {
		return c.parent.Done()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	if c.ended != running {
		close(c.done) // ended before anyone asked for Done
		return c.done
	}
	if c.endedLocked() {
		return c.done // it ended just now: endLocked closed done
	}
	stopParent := context.AfterFunc(c.parent, func() { c.cancel(c.parent.Err()) })
	stopCaller := func() bool { return false }
	if c.caller != nil {
		stopCaller = context.AfterFunc(c.caller, func() { c.cancel(c.caller.Err()) })
	}
	stopTimer := func() bool { return false }
	if !c.req.Deadline.IsZero() {
		stopTimer = time.AfterFunc(time.Until(c.req.Deadline), func() { c.cancel(context.DeadlineExceeded) }).Stop
	}
	c.stop = func() { stopTimer(); stopParent(); stopCaller() }
	return c.done
}

func (c *callContext) Err() error {
	if !c.own() {
		return c.parent.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endedLocked()
	return c.ended.err()
}

// endedLocked reports whether c has ended, noting the parent's end or the
// deadline's passing in c.ended (and closing Done, if made); c.mu is held.
func (c *callContext) endedLocked() bool {
	if c.ended != running {
		return true
	}
	if err := c.parent.Err(); err != nil {
		c.endLocked(err)
	} else if c.caller != nil && c.caller.Err() != nil {
		c.endLocked(c.caller.Err())
	} else if !c.req.Deadline.IsZero() && time.Until(c.req.Deadline) <= 0 {
		c.endLocked(context.DeadlineExceeded)
	}
	return c.ended != running
}

func (c *callContext) endLocked(err error) {
	c.ended = endedBy(err)
	if c.done != nil {
		close(c.done)
	}
	if c.stop != nil {
		c.stop()
	}
}

func (c *callContext) cancel(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended == running {
		c.endLocked(err)
	}
}

// end is called when the function has returned, as WithDeadline's cancel
// would be: what it left waiting on its context is released.
func (c *callContext) end() {
	if c.own() {
		c.cancel(context.Canceled)
	}
}
