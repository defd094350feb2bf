package client

import (
	"context"
	"encoding/json"
	"reflect"

	"github.com/fnmesh/fnmesh"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/jsondec"
)

// LocalServices are the services whose replicas run in the caller's own
// process. A Client with Config.Local hands each Call to such a service
// straight to its replica, in-process, and sends everything else over
// the bus. placement.Process implements it; handlers.Service.Dispatch
// does the work.
type LocalServices interface {
	// Hosts reports whether service runs in this process.
	Hosts(service string) bool
	// Dispatch hands req to a replica of service in this process and
	// returns at once; the reply of a call goes to deliver, once. An
	// error means no replica here can take req now (none, full, or
	// draining): the client then sends req over the bus. A call of a
	// function that runs on its caller's goroutine (handlers.Inline)
	// returns once deliver has its reply; ctx, the caller's, cancels it.
	Dispatch(ctx context.Context, service string, req *bus.Request, deliver func(*bus.Reply)) error
}

// inlineServices is implemented by LocalServices that know which calls
// run on their caller's goroutine (handlers.Inline), so that Dispatch
// returns with the reply: such a call takes no place among the calls
// waiting for a reply. placement.Process implements it.
type inlineServices interface {
	// Inline reports whether a call of function of service, when
	// Dispatch takes it, is answered before Dispatch returns. A call
	// Dispatch refuses (an error) is not run, and goes over the bus.
	Inline(service, function string) bool
}

// callInline runs a call of a function that runs on the caller's
// goroutine. ran is false when no replica here took it: it goes over the
// bus. done is false when the replica may still hold req.
func (c *Client) callInline(ctx context.Context, service string, req *bus.Request, function string, local LocalServices) (_ *bus.Reply, ran, done bool, _ error) {
	if c.closed.Load() {
		return nil, true, true, errClosed()
	}
	w := c.waiters.Get().(*waiter)
	req.Failed = nil
	if local.Dispatch(ctx, service, req, w.direct) != nil {
		c.waiters.Put(w)
		return nil, false, true, nil
	}
	var rep *bus.Reply
	select {
	case rep = <-w.ch:
	default:
		// Not answered on this goroutine after all: the waiter may still
		// get the reply and the replica read req, so neither is reused.
		return nil, true, false, fnmesh.Errorf(fnmesh.CodeInternal, "%s: the in-process replica returned before answering", function)
	}
	w.took.Store(false)
	c.waiters.Put(w)
	if c.closed.Load() {
		return nil, true, true, errClosed() // as a call waiting for a reply when Close came
	}
	if ctx.Err() != nil {
		// Cancelled while it ran: the caller learns what it would have
		// learnt waiting for a worker.
		return nil, true, true, contextError(ctx, function)
	}
	rep, err := replyOf(rep)
	return rep, true, true, err
}

// local returns where inv runs in this process, or nil when it goes over
// the bus: a Call to a hosted service, or a Send to one with
// Config.LocalSends.
func (c *Client) local(inv *Invocation) LocalServices {
	l := c.cfg.Local
	if l == nil || inv.Async && !c.cfg.LocalSends || !l.Hosts(inv.Service) {
		return nil
	}
	return l
}

// sendLocal runs inv on a replica in this process, through the backlog
// bound and the breaker as over the bus: once the bound is reached it is
// refused, not run ahead of the requests waiting in the bus. When no
// replica here can take it, the request goes over the bus.
func (c *Client) sendLocal(ctx context.Context, inv *Invocation, l LocalServices) (json.RawMessage, error) {
	if err := c.admit.check(ctx, inv.Service); err != nil {
		return nil, err
	}
	if c.cfg.Breaker.Disabled {
		return c.transportLocal(ctx, inv, l)
	}
	var result json.RawMessage
	var err error
	ran, berr := c.breaker(inv.Function).guard(func() error {
		result, err = c.transportLocal(ctx, inv, l)
		return err
	}, func(err error) bool {
		// The caller allowed too little time to tell.
		return fnmesh.CodeOf(err) == fnmesh.CodeDeadlineExceeded && !inv.Async && inv.allowed < c.cfg.Breaker.MinTimeout
	})
	if !ran {
		return nil, breakerOpen(inv.Function, berr)
	}
	return result, err
}

func (c *Client) transportLocal(ctx context.Context, inv *Invocation, l LocalServices) (json.RawMessage, error) {
	req := &inv.wire // Dispatch copies it, or runs it before it returns
	*req = bus.Request{
		ID: inv.ID, Function: inv.Name, Payload: inv.Args, Deadline: inv.Deadline, Token: inv.Token,
		Caller: c.cfg.Name, TraceParent: inv.TraceParent, IdempotencyKey: inv.IdempotencyKey,
		Value: inv.argValue,
	}
	if inv.argsBorrowed {
		// The replica may still read the arguments after the call gave up
		// (deadline, cancel): it gets its own copy of the caller's bytes.
		req.Payload = append([]byte(nil), req.Payload...)
	}
	if inv.Async {
		if l.Dispatch(ctx, inv.Service, req, nil) == nil {
			inv.inProcess = true // Dispatch copied req
			return nil, nil
		}
		if err := c.admit.admit(ctx, inv.Service); err != nil {
			return nil, err
		}
		return nil, c.publish(ctx, inv.Service, req)
	}
	req.ReplyTo = c.inbox
	rep, inProcess, err := c.roundTripVia(ctx, inv.Service, req, inv.Function, l)
	inv.inProcess = inProcess
	if rep != nil {
		inv.Replica = rep.Replica
	}
	if err != nil {
		return nil, err
	}
	inv.resultValue = rep.Value
	return rep.Payload, nil
}

// marshalled returns in when Payload was made from it by json.Marshal
// (bus.Request.Value), else nil.
func marshalled(in any, borrowed bool) any {
	if borrowed {
		return nil
	}
	if _, raw := in.(json.RawMessage); raw {
		return nil
	}
	return in
}

// takeValue stores a result that came as a Go value (an in-process
// replica's, of a type that JSON would copy exactly) in out: assigned
// when out points to its type, else through JSON as over the bus.
func takeValue(function string, v, out any) error {
	if out == nil {
		return nil
	}
	dst := reflect.ValueOf(out)
	if dst.Kind() == reflect.Pointer && !dst.IsNil() && dst.Type().Elem() == reflect.TypeOf(v) {
		dst.Elem().Set(reflect.ValueOf(v))
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fnmesh.Errorf(fnmesh.CodeInternal, "result is not JSON-encodable: %v", err)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	if err := jsondec.Unmarshal(b, out); err != nil {
		return fnmesh.Errorf(fnmesh.CodeInternal, "result of %s does not decode into %T: %v", function, out, err)
	}
	return nil
}
