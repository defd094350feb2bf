package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
)

// replica is one Run of a service: it turns delivered requests into calls
// of the registered functions and their results into replies.
type replica struct {
	svc     *Service
	id      string
	bus     bus.Bus
	pub     message.Publisher
	idem    bus.IdempotencyStore
	log     *slog.Logger
	hardCtx context.Context // cancelled when the drain timeout ends
	status  *statusRecorder // nil: no status records
	wg      sync.WaitGroup  // requests being handled
	running atomic.Int64
}

// track is what a worker runs for each request: handle, counted, so that
// a stopping replica knows what it still runs.
func (r *replica) track(dr *bus.DeliveredRequest) error {
	r.wg.Add(1)
	r.running.Add(1)
	defer func() { r.running.Add(-1); r.wg.Done() }()
	return r.handle(dr)
}

// handle handles one delivered request. It returns an
// error (and so nacks, for a later redelivery) only when the outcome
// could not be recorded: a reply or dead letter that failed to publish.
// Every other outcome, bad input included, is answered and acked.
func (r *replica) handle(dr *bus.DeliveredRequest) error {
	d := dr.Delivery
	req := &Request{wire: &dr.Request}
	breq := req.wire
	if err := dr.DecodeErr; err != nil {
		return r.reject(dr, breq, fnmesh.Wrap(fnmesh.CodeInvalidArgument, err))
	}
	if len(breq.Payload) > r.svc.cfg.MaxPayloadBytes {
		return r.reject(dr, breq, fnmesh.Errorf(fnmesh.CodeInvalidArgument,
			"arguments of %d bytes exceed the limit of %d", len(breq.Payload), r.svc.cfg.MaxPayloadBytes))
	}
	if len(breq.Payload) > 0 && !json.Valid(breq.Payload) {
		return r.reject(dr, breq, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "%v: field %q is not valid JSON", bus.ErrMalformed, bus.FieldPayload))
	}
	f := r.svc.funcs[breq.Function] // read-only once the replica runs
	if f == nil {
		return r.reject(dr, breq, fnmesh.Errorf(fnmesh.CodeNotFound, "function %s.%s not found", r.svc.name, breq.Function))
	}
	if d.Count > r.svc.cfg.MaxDeliveries {
		// Replicas keep dying or stalling on it: a poison request.
		e := fnmesh.Errorf(fnmesh.CodeInternal, "request delivered %d times without finishing (limit %d): replicas stopped while running it", d.Count, r.svc.cfg.MaxDeliveries)
		if breq.ReplyTo != "" {
			if err := r.reply(breq.ReplyTo, breq.ID, nil, e, nil); err != nil {
				return err
			}
		}
		return r.deadLetter(dr, e, d.Count-1)
	}
	if !breq.Deadline.IsZero() && !time.Now().Before(breq.Deadline) {
		// The caller has given up: never run it. A waiting caller already
		// got deadline_exceeded from its own timer; a Send is recorded.
		if breq.ReplyTo != "" {
			r.log.Debug("dropped expired call", "function", breq.Function, "id", breq.ID)
			return nil
		}
		return r.deadLetter(dr, fnmesh.NewError(fnmesh.CodeDeadlineExceeded, "deadline passed before the request was run"), 0)
	}

	req.ID, req.Service, req.Function, req.Payload = breq.ID, r.svc.name, breq.Function, breq.Payload
	req.Token, req.Caller, req.Deadline = breq.Token, breq.Caller, breq.Deadline
	req.Async, req.Attempt, req.Replica, req.fn = breq.ReplyTo == "", max(d.Count, 1), r.id, f
	req.TraceParent, req.IdempotencyKey = breq.TraceParent, breq.IdempotencyKey
	r.status.running(req)
	if breq.IdempotencyKey != "" {
		return r.status.settled(req, r.runOnce(dr, f, req, breq))
	}
	return r.status.settled(req, r.run(dr, f, req, breq))
}

// errStopping nacks a request whose run the drain timeout cut short: the
// group subscriber hands it back for another replica.
var errStopping = errors.New("replica stopping: request handed back")

// run runs a request to its end: a call is answered; a send is retried
// per the retry policy and dead-lettered if it keeps failing. An error
// means the outcome is not recorded: the request is nacked and delivered
// again (or handed back, when the replica stops).
func (r *replica) run(dr *bus.DeliveredRequest, f *function, req *Request, breq *bus.Request) error {
	_, err := r.runResult(dr, f, req, breq, noHooks)
	if errors.Is(err, errFailed) {
		return nil
	}
	return err
}

// runResult is run, returning the call's encoded result on success.
// outcomeHooks run before a request's outcome is told (reply or dead
// letter), so that what a caller learns is already recorded.
type outcomeHooks struct {
	beforeFail    func()
	beforeSuccess func(result []byte)
}

var noHooks = outcomeHooks{beforeFail: func() {}, beforeSuccess: func([]byte) {}}

func (r *replica) runResult(dr *bus.DeliveredRequest, f *function, req *Request, breq *bus.Request, hooks outcomeHooks) ([]byte, error) {
	if !req.Async {
		out, err := r.invoke(f, req)
		if err != nil && r.hardCtx.Err() != nil {
			return nil, errStopping
		}
		if errors.Is(err, errIdemStore) {
			r.log.Error("request not run; it will be delivered again", "err", err)
			return nil, err
		}
		var result json.RawMessage
		if err == nil {
			var merr error
			if result, merr = marshalResult(out); merr != nil {
				err = fnmesh.Errorf(fnmesh.CodeInternal, "result is not JSON-encodable: %v", merr)
			}
		}
		if err != nil {
			hooks.beforeFail()
		} else {
			hooks.beforeSuccess(result)
		}
		if rerr := r.reply(breq.ReplyTo, req.ID, result, err, dr); rerr != nil {
			return nil, rerr
		}
		if err != nil {
			return nil, errFailed
		}
		return result, nil
	}

	policy := r.svc.cfg.Retry
	if f.retry != nil {
		policy = *f.retry
	}
	for {
		_, err := r.invoke(f, req)
		if err == nil {
			hooks.beforeSuccess(nil)
			return nil, nil
		}
		if r.hardCtx.Err() != nil {
			return nil, errStopping
		}
		if errors.Is(err, errIdemStore) {
			r.log.Error("request not run; it will be delivered again", "err", err)
			return nil, err
		}
		if !retryable(err) || req.Attempt >= policy.MaxAttempts {
			hooks.beforeFail()
			if derr := r.deadLetter(dr, asMeshError(err), req.Attempt); derr != nil {
				return nil, derr
			}
			return nil, errFailed
		}
		pause := policy.Backoff(req.Attempt)
		if !req.Deadline.IsZero() && time.Now().Add(pause).After(req.Deadline) {
			hooks.beforeFail()
			if derr := r.deadLetter(dr, fnmesh.Errorf(fnmesh.CodeDeadlineExceeded, "deadline passed while retrying, last error: %v", err), req.Attempt); derr != nil {
				return nil, derr
			}
			return nil, errFailed
		}
		r.log.Debug("retrying send", "function", req.Function, "id", req.ID, "attempt", req.Attempt, "pause", pause, "err", err)
		select {
		case <-time.After(pause):
		case <-r.hardCtx.Done():
			return nil, errStopping
		}
		req.Attempt++
		req.decoded, req.arg, req.argErr = false, nil, nil
	}
}

// errFailed reports a request that ended in an error its caller was told
// of (or that was dead-lettered): settled, but not a success.
var errFailed = errors.New("request failed")

// runOnce runs a request that carries an idempotency key. The function's
// chain decides (after the token check and the access rule) whether it
// runs; the key is settled before the caller can learn the outcome: done
// (with the result) before the reply, freed before a failure is told, so
// that a request repeated at once gets the first one's result, or runs
// when the first failed. A redelivery of the same entry (its replica
// died) runs again unless it had finished.
func (r *replica) runOnce(dr *bus.DeliveredRequest, f *function, req *Request, breq *bus.Request) error {
	req.idem = &idemRun{ctx: r.hardCtx, store: r.idem, owner: dr.Delivery.EntryID, window: r.svc.cfg.IdempotencyWindow}
	hooks := outcomeHooks{
		beforeFail:    func() { req.idem.settle(r.svc.name, r.log, false, nil) },
		beforeSuccess: func(result []byte) { req.idem.settle(r.svc.name, r.log, true, result) },
	}
	_, err := r.runResult(dr, f, req, breq, hooks)
	if errors.Is(err, errFailed) {
		return nil
	}
	return err // nil, or stopping or unrecorded: delivered again, key kept
}

// invoke runs the function's chain with the request's deadline, turning a
// panic into an internal error.
func (r *replica) invoke(f *function, req *Request) (out any, err error) {
	// The context descends from hardCtx, not from the delivery: a draining
	// replica lets running calls finish, and cancels them only when the
	// drain timeout ends.
	var ctx *callContext
	if !req.ran {
		// The first run uses the context kept in the Request; a retry
		// gets a new one, since the last run's may still be held.
		req.ran = true
		ctx = &req.firstRun
		ctx.init(r.hardCtx, req)
	} else {
		ctx = newCallContext(r.hardCtx, req)
	}
	defer ctx.end()
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("function panicked", "function", req.Function, "id", req.ID, "panic", p, "stack", string(debug.Stack()))
			// The panic value stays in the log: it may hold anything the
			// function had in hand, and callers need only the id to find it.
			out, err = nil, fnmesh.Errorf(fnmesh.CodeInternal, "%s.%s panicked; its replica logged the panic under request id %s", req.Service, req.Function, req.ID)
		}
	}()
	return f.handler.Serve(ctx, req)
}

// retryable reports whether another run of a failed Send might succeed.
func retryable(err error) bool {
	switch fnmesh.CodeOf(err) {
	case fnmesh.CodeInvalidArgument, fnmesh.CodeUnauthenticated, fnmesh.CodePermissionDenied, fnmesh.CodeNotFound:
		return false
	}
	return true
}

// asMeshError gives any error a code for the wire: fnmesh errors keep
// theirs, context errors become deadline_exceeded or canceled, others
// internal.
func asMeshError(err error) *fnmesh.Error {
	var fe *fnmesh.Error
	if errors.As(err, &fe) {
		if !fnmesh.ValidCode(fe.Code) {
			return &fnmesh.Error{Code: fnmesh.CodeInternal, Message: fmt.Sprintf("function returned invalid error code %q: %s", fe.Code, fe.Message)}
		}
		return fe
	}
	return &fnmesh.Error{Code: fnmesh.CodeOf(err), Message: err.Error()}
}

// reply publishes the outcome of a call to the caller's reply stream: its
// encoded result, or callErr. When the reply settles the request (it is
// the last thing its handling does), acks is the request, acked with the
// reply: on Redis one round trip for both.
func (r *replica) reply(replyTo, id string, result []byte, callErr error, acks *bus.DeliveredRequest) error {
	rep := &bus.Reply{ID: id, Replica: r.id, AcksRequest: acks, Payload: result}
	if callErr != nil {
		rep.Err, rep.Payload = asMeshError(callErr), nil
	}
	// hardCtx: a reply is written even while draining.
	if err := r.bus.SendReply(r.hardCtx, replyTo, rep); err != nil {
		r.log.Error("reply failed; the request will be delivered again", "err", err)
		return err
	}
	return nil
}

func marshalResult(out any) ([]byte, error) {
	switch v := out.(type) {
	case json.RawMessage:
		return v, nil
	case nil:
		return []byte("null"), nil
	}
	return json.Marshal(out)
}

// reject answers a request that cannot run (malformed, too large, unknown
// function) and records it as a dead letter.
func (r *replica) reject(dr *bus.DeliveredRequest, breq *bus.Request, e *fnmesh.Error) error {
	r.log.Warn("rejected request", "code", e.Code, "reason", e.Message, "entry", dr.Delivery.EntryID)
	if breq != nil && breq.ReplyTo != "" {
		if err := r.reply(breq.ReplyTo, breq.ID, nil, e, nil); err != nil {
			return err
		}
	}
	return r.deadLetter(dr, e, 0)
}

// deadLetter records the request on the service's dead-letter stream, as
// its entry holds it.
func (r *replica) deadLetter(dr *bus.DeliveredRequest, e *fnmesh.Error, attempts int) error {
	msg := dr.Message()
	if attempts > 0 {
		r.log.Warn("request failed for good", "function", msg.Metadata[bus.FieldFunction], "id", msg.Metadata[bus.FieldID], "attempts", attempts, "code", e.Code, "reason", e.Message)
	}
	dl := bus.NewDeadLetterMessage(msg, dr.Delivery.EntryID, r.id, e.Code, e.Message, attempts)
	if err := r.publish(bus.DeadLetterTopic(r.svc.name), dl); err != nil {
		return err
	}
	r.status.deadLettered(msg, e, attempts)
	return nil
}

func (r *replica) publish(topic string, m *message.Message) error {
	// hardCtx, not the message's: a reply is written even while draining.
	// The transport bounds the write itself.
	m.SetContext(r.hardCtx)
	if err := r.pub.Publish(topic, m); err != nil {
		r.log.Error("publish failed; the request will be delivered again", "topic", topic, "err", err)
		return err
	}
	return nil
}
