package client

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/fnmesh/fnmesh"
)

// BreakerConfig configures the circuit breaker in front of each target
// function.
type BreakerConfig struct {
	// Disabled turns breakers off.
	Disabled bool
	// ConsecutiveFailures opens the breaker after this many failures in a
	// row. Default 5.
	ConsecutiveFailures uint32
	// OpenTimeout is how long an open breaker fails calls before letting
	// trial calls through (half-open). Default 5s.
	OpenTimeout time.Duration
	// HalfOpenCalls is how many trial calls a half-open breaker lets
	// through; that many successes close it. Default 1.
	HalfOpenCalls uint32
	// MinTimeout: a deadline_exceeded counts against the target only when
	// the call allowed it at least this long. A caller's own tiny timeout
	// says nothing about the target, and through a shared client (the
	// gateway) must not open the breaker for everyone. Default 200ms.
	MinTimeout time.Duration
	// OnStateChange, if set, is told of every change, e.g. for logs.
	OnStateChange func(function string, from, to gobreaker.State)
}

func (b *BreakerConfig) setDefaults() {
	if b.ConsecutiveFailures == 0 {
		b.ConsecutiveFailures = 5
	}
	if b.OpenTimeout == 0 {
		b.OpenTimeout = 5 * time.Second
	}
	if b.HalfOpenCalls == 0 {
		b.HalfOpenCalls = 1
	}
	if b.MinTimeout == 0 {
		b.MinTimeout = 200 * time.Millisecond
	}
}

// breaker is the breaker in front of one function: gobreaker's, which
// keeps the state, behind a fast path. While the breaker is closed and
// has counted no failure since its last success (clean), a call runs
// without it: a success then changes nothing the breaker decides on (it
// trips on failures in a row only), and gobreaker takes its lock twice
// and reads the clock twice per call, a lock that calls on every core
// queue on. A failure is counted through gobreaker after the call; calls
// then take its path until a success leaves it closed and clean again.
// (Of calls that end at the same time, a success may go uncounted after
// a failure: the failures in a row are then counted from the failure.)
type breaker struct {
	cb    *gobreaker.CircuitBreaker[struct{}]
	clean atomic.Bool
	mu    sync.Mutex // orders counting a failure and finding the breaker clean
}

// guard runs call through b, unless b is open. notCounted tells outcomes
// the breaker ignores (a deadline the caller set too short to tell).
// ran is false when b refused the call, berr then says why.
func (b *breaker) guard(call func() error, notCounted func(error) bool) (ran bool, berr error) {
	if b.clean.Load() {
		if err := call(); err != nil && !notCounted(err) && !breakerSuccess(err) && !breakerExcluded(err) {
			b.fail(err)
		}
		return true, nil
	}
	_, berr = b.cb.Execute(func() (struct{}, error) {
		ran = true
		err := call()
		if err != nil && notCounted(err) {
			return struct{}{}, errNotCounted
		}
		return struct{}{}, err
	})
	if ran {
		b.settle()
	}
	return ran, berr
}

// fail counts a failure of a call that ran on the fast path.
func (b *breaker) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clean.Store(false)
	// An open breaker (another call's failure opened it) runs nothing.
	b.cb.Execute(func() (struct{}, error) { return struct{}{}, err })
}

// settle sets clean once the breaker is closed with no failure counted.
func (b *breaker) settle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clean.Store(b.cb.State() == gobreaker.StateClosed && b.cb.Counts().ConsecutiveFailures == 0)
}

// breakerOpen is the error of a call the breaker refused.
func breakerOpen(function string, err error) error {
	return fnmesh.Errorf(fnmesh.CodeUnavailable, "circuit breaker for %s: %w", function, err)
}

// errNotCounted marks an outcome the breaker ignores.
var errNotCounted = errors.New("not counted by the breaker")

func newBreaker(function string, cfg BreakerConfig) *breaker {
	b := &breaker{cb: gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        function,
		MaxRequests: cfg.HalfOpenCalls,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= cfg.ConsecutiveFailures
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			if cfg.OnStateChange != nil {
				cfg.OnStateChange(name, from, to)
			}
		},
		IsSuccessful: breakerSuccess,
		IsExcluded:   breakerExcluded,
	})}
	b.clean.Store(true) // closed, nothing counted
	return b
}

// breakerExcluded says which outcomes the breaker ignores.
func breakerExcluded(err error) bool {
	return errors.Is(err, errNotCounted) || fnmesh.CodeOf(err) == fnmesh.CodeCanceled
}

// breakerSuccess says which outcomes show the target healthy: anything but
// the failures of the target or the way to it. A caller's invalid
// argument, bad token or missing permission, and a function's own
// application error, do not open the breaker. (A full backlog is refused
// before the breaker, with resource_exhausted, and never reaches it.)
func breakerSuccess(err error) bool {
	switch fnmesh.CodeOf(err) {
	case fnmesh.CodeUnavailable, fnmesh.CodeDeadlineExceeded, fnmesh.CodeInternal:
		return false
	}
	return true
}

// BreakerState returns the state of the breaker in front of function
// ("closed", "half-open" or "open"); closed if it has none yet.
func (c *Client) BreakerState(function string) string {
	if v, ok := c.breakers.Load(function); ok {
		return v.(*breaker).cb.State().String()
	}
	return gobreaker.StateClosed.String()
}

func (c *Client) breaker(function string) *breaker {
	if v, ok := c.breakers.Load(function); ok {
		return v.(*breaker)
	}
	v, _ := c.breakers.LoadOrStore(function, newBreaker(function, c.cfg.Breaker))
	return v.(*breaker)
}
