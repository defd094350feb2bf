package client

import (
	"errors"
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

// breaker runs a call with Execute, whose function does not escape: no
// allocation per call, where a two-step breaker's Allow makes a closure.
type breaker = gobreaker.CircuitBreaker[struct{}]

// breakerOpen is the error of a call the breaker refused.
func breakerOpen(function string, err error) error {
	return fnmesh.Errorf(fnmesh.CodeUnavailable, "circuit breaker for %s: %w", function, err)
}

// errNotCounted marks an outcome the breaker ignores.
var errNotCounted = errors.New("not counted by the breaker")

func newBreaker(function string, cfg BreakerConfig) *breaker {
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
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
		IsExcluded: func(err error) bool {
			return errors.Is(err, errNotCounted) || fnmesh.CodeOf(err) == fnmesh.CodeCanceled
		},
	})
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
		return v.(*breaker).State().String()
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
