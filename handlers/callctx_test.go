package handlers

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A call's context behaves as context.WithDeadline plus the CallInfo
// value would, though its timer starts only when Done is asked for.
func TestCallContext(t *testing.T) {
	info := CallInfo{Service: "s", Function: "f", Attempt: 2}
	mk := func(parent context.Context, deadline time.Time, info CallInfo) *callContext {
		return newCallContext(parent, &Request{Service: info.Service, Function: info.Function, Attempt: info.Attempt, Deadline: deadline})
	}
	t.Run("deadline passed before Done was asked for", func(t *testing.T) {
		c := mk(context.Background(), time.Now().Add(-time.Millisecond), info)
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err %v, want deadline exceeded", err)
		}
		select {
		case <-c.Done():
		default:
			t.Fatal("Err is set but Done is open")
		}
	})
	// Done asked for first, once the call has ended by a deadline, a
	// parent or an inline call's caller that nobody noted yet: a closed
	// channel, once (it was closed twice, a panic in the function).
	t.Run("Done asked for first after the end", func(t *testing.T) {
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		for name, c := range map[string]*callContext{
			"deadline": mk(context.Background(), time.Now().Add(-time.Millisecond), info),
			"parent":   mk(ended, time.Now().Add(time.Hour), info),
			"caller": func() *callContext {
				c := mk(context.Background(), time.Now().Add(time.Hour), info)
				c.caller = ended
				return c
			}(),
		} {
			select {
			case <-c.Done():
			default:
				t.Fatalf("%s: Done is open", name)
			}
			if c.Err() == nil {
				t.Fatalf("%s: Err is nil", name)
			}
		}
	})
	t.Run("Done closes at the deadline", func(t *testing.T) {
		c := mk(context.Background(), time.Now().Add(20*time.Millisecond), info)
		if c.Err() != nil {
			t.Fatal("ended early")
		}
		child, cancel := context.WithCancel(c) // ends with its parent
		defer cancel()
		<-child.Done()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err %v", err)
		}
		if d, ok := c.Deadline(); !ok || d.IsZero() {
			t.Fatal("no deadline")
		}
	})
	t.Run("parent cancelled", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		c := mk(parent, time.Now().Add(time.Hour), info)
		done := c.Done()
		cancel()
		<-done
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err %v", err)
		}
	})
	t.Run("end releases waiters", func(t *testing.T) {
		c := mk(context.Background(), time.Now().Add(time.Hour), info)
		done := c.Done()
		c.end()
		<-done
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatalf("Err %v", c.Err())
		}
	})
	t.Run("no deadline of its own", func(t *testing.T) {
		parent, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		c := mk(parent, time.Time{}, info)
		pd, _ := parent.Deadline()
		if d, ok := c.Deadline(); !ok || !d.Equal(pd) {
			t.Fatalf("deadline %v %v, want the parent's", d, ok)
		}
		if c.Done() != parent.Done() {
			t.Fatal("Done is not the parent's")
		}
		c.end()
		if c.Err() != nil {
			t.Fatal("end cancelled a context without a deadline of its own")
		}
	})
	t.Run("values", func(t *testing.T) {
		type key struct{}
		parent := context.WithValue(context.Background(), key{}, "v")
		c := mk(parent, time.Now().Add(time.Hour), info)
		wrapped := context.WithValue(c, struct{ k int }{1}, 1)
		if got := Info(wrapped); got != info {
			t.Fatalf("Info through a child: %+v", got)
		}
		if Info(c) != info || wrapped.Value(key{}) != "v" {
			t.Fatal("values lost")
		}
		if Info(context.Background()) != (CallInfo{}) {
			t.Fatal("Info of a plain context")
		}
	})
}
