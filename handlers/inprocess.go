package handlers

import (
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
)

// In-process requests. Every replica a Run starts also takes requests
// from its own process, handed over with Service.Dispatch instead of
// through the bus (client.Config.Local routes calls there). Such a request
// runs through the same steps as one read from the bus: size and JSON
// checks, unknown functions and expired deadlines refused (and recorded as
// dead letters), idempotency keys, the whole chain (interceptors, token
// check or access rule, claims, middleware, validation), the deadline as
// the function's context deadline, panics as internal. Only the transport
// is skipped: no stream entry, no reply stream, no goroutine of the bus.
//
// A replica takes an in-process request only while fewer than
// Config.Concurrency requests run on it, those it read from the bus
// included; Dispatch refuses more, and refuses everything once the replica
// drains, so that the caller sends the request over the bus instead,
// where it waits for a replica (this one or another) as any request does.
// (The bus side still takes up to Concurrency requests of its own.)

// ErrNotServedHere is returned by Dispatch when no replica of the service
// in this process can take a request now: none runs, each is full, or
// they drain. The caller sends the request over the bus instead.
var ErrNotServedHere = errors.New("handlers: no replica in this process can take the request")

// localReplicas are the replicas of a service running in this process.
type localReplicas struct {
	mu   sync.Mutex                    // serializes changes of list
	list atomic.Pointer[[]*localEntry] // copied on write: Dispatch takes no lock
	next atomic.Uint32                 // round robin over list
}

func (lr *localReplicas) entries() []*localEntry {
	if l := lr.list.Load(); l != nil {
		return *l
	}
	return nil
}

// localEntry is a replica's in-process door: a bounded set of workers.
type localEntry struct {
	r        *replica
	jobs     chan localJob
	inflight atomic.Int64 // taken and not finished
	max      int64
	closed   atomic.Bool
	idle     chan struct{} // signalled when inflight drops to 0 after closed
	quit     chan struct{}
	workers  sync.WaitGroup
}

type localJob struct {
	req     *Request // its wire field holds the request as dispatched
	deliver func(*bus.Reply)
	inline  bool // run on its caller's goroutine
}

// Dispatch hands req, a request for s, to a replica of s running in this
// process, and returns at once. A call's reply (req.ReplyTo set) is given
// to deliver, once, from another goroutine; a send (no ReplyTo) gets none.
// It returns ErrNotServedHere when no replica here can take req now.
// Dispatch copies req; the replica reads req.Payload until it delivers
// the reply (a send: until it finishes), so the caller must not change it.
// ctx is the caller's: a request dispatched to a worker does not see it.
//
// A call of a function registered with Inline is the exception: it runs
// on the calling goroutine, and Dispatch returns once deliver has its
// reply (see DispatchInline).
func (s *Service) Dispatch(ctx context.Context, req *bus.Request, deliver func(*bus.Reply)) error {
	inline := false
	if req.ReplyTo != "" {
		f := s.funcs[req.Function] // read-only once a replica runs
		inline = f != nil && f.inline
	}
	return s.dispatch(ctx, req, deliver, inline)
}

// DispatchInline is Dispatch running a call (req.ReplyTo set) of any of
// s's functions on the calling goroutine, as a plain function call: it
// returns once deliver has the reply, called on this goroutine before
// DispatchInline returns. Every step a call takes on a replica worker is
// taken (checks, chain, the deadline as the function's context deadline,
// panics as internal, the replica's Concurrency bound and drain), and the
// function's context ends also when ctx, the caller's, is cancelled (it
// carries none of ctx's values). But the caller waits for the function
// to return: a function that ignores its context holds its caller past
// the deadline or the cancellation (the caller then gets
// deadline_exceeded, or canceled from the client). Sends are dispatched as
// by Dispatch.
//
// A call cut short because the replica stopped (its drain timed out) is
// not answered here: DispatchInline returns ErrNotServedHere, and the
// caller, still waiting on this goroutine, sends it over the bus, where
// another replica runs it. (Dispatch does the same for a function
// registered with Inline.)
func (s *Service) DispatchInline(ctx context.Context, req *bus.Request, deliver func(*bus.Reply)) error {
	return s.dispatch(ctx, req, deliver, req.ReplyTo != "")
}

// Inline reports whether function was registered with Inline: a call of
// it that Dispatch takes runs on the caller's goroutine.
func (s *Service) Inline(function string) bool {
	f := s.funcs[function] // read-only once a replica runs
	return f != nil && f.inline
}

func (s *Service) dispatch(ctx context.Context, req *bus.Request, deliver func(*bus.Reply), inline bool) error {
	lr := &s.local
	list := lr.entries()
	n := len(list)
	if n == 0 {
		return ErrNotServedHere
	}
	var hr *Request
	if inline {
		// The caller waits on this goroutine: the run reads its request.
		hr = &Request{wire: req}
	} else {
		// The caller may give up and go on before the run ends: the run
		// gets its own copy, in the same allocation.
		o := &ownedRequest{own: *req}
		o.own.Failed = nil
		o.wire, hr = &o.own, &o.Request
	}
	if inline && ctx.Done() != nil {
		hr.firstRun.caller = ctx // the run's context ends with the caller's
	}
	start := 0
	if n > 1 {
		start = int(lr.next.Add(1) % uint32(n))
	}
	for i := 0; i < n; i++ {
		e := list[(start+i)%n]
		if !e.admit() {
			continue
		}
		j := localJob{req: hr, deliver: deliver, inline: inline}
		if inline {
			answered := e.r.serveLocal(j)
			e.done()
			// The caller may reuse its request once this returns; a
			// function that kept its Request decodes Payload instead.
			hr.wire = nil
			if !answered {
				return ErrNotServedHere // stopped mid-run: the caller sends it over the bus
			}
		} else {
			e.jobs <- j // never blocks: jobs holds max
		}
		return nil
	}
	return ErrNotServedHere
}

// ownedRequest is a Request with its own copy of the request it runs.
type ownedRequest struct {
	Request
	own bus.Request
}

// admit counts a request in unless the entry is full or closed.
func (e *localEntry) admit() bool {
	if e.closed.Load() {
		return false
	}
	if e.inflight.Add(1)+e.r.running.Load() > e.max || e.closed.Load() {
		e.done()
		return false
	}
	return true
}

// done counts a job finished (or one admit gave up).
func (e *localEntry) done() {
	if e.inflight.Add(-1) == 0 && e.closed.Load() {
		select {
		case e.idle <- struct{}{}:
		default:
		}
	}
}

// startLocal opens the replica's in-process door and joins s's local
// replicas.
func (r *replica) startLocal() *localEntry {
	n := r.svc.cfg.Concurrency
	e := &localEntry{r: r, jobs: make(chan localJob, n), max: int64(n), idle: make(chan struct{}, 1), quit: make(chan struct{})}
	for i := 0; i < n; i++ {
		e.workers.Add(1)
		go func() {
			defer e.workers.Done()
			// One channel, not a select with quit: wait closes jobs once
			// no dispatch can send on it.
			for j := range e.jobs {
				r.serveLocal(j)
				e.done()
			}
		}()
	}
	lr := &r.svc.local
	lr.mu.Lock()
	list := append(slices.Clone(lr.entries()), e)
	lr.list.Store(&list)
	lr.mu.Unlock()
	return e
}

// close stops taking in-process requests (they go to the bus) and leaves
// the service's local replicas; running ones go on.
func (e *localEntry) close() {
	lr := &e.r.svc.local
	lr.mu.Lock()
	list := slices.DeleteFunc(slices.Clone(lr.entries()), func(x *localEntry) bool { return x == e })
	lr.list.Store(&list)
	lr.mu.Unlock()
	e.closed.Store(true)
}

// wait waits up to d for the in-process requests still running, then
// stops the workers. It reports whether they all finished.
func (e *localEntry) wait(d time.Duration) bool {
	select {
	case <-e.quit:
		return true // stopped before
	default:
	}
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	finished := true
	for e.inflight.Load() > 0 && finished {
		select {
		case <-e.idle:
		case <-timeout.C:
			finished = false
		}
	}
	if finished {
		// No dispatch sends any more: each that passed admit's first closed check
		// counted itself in inflight, which is 0, or sees closed on its
		// second check.
		close(e.quit)
		close(e.jobs)
		e.workers.Wait()
	}
	return finished
}

// serveLocal runs one in-process request to its end. It reports whether
// the request was answered here: an inline call cut short by the replica
// stopping is not, its caller sends it over the bus.
func (r *replica) serveLocal(j localJob) bool {
	breq := j.req.wire
	async := breq.ReplyTo == ""
	result, value, err := r.runLocal(j.req, async)
	if errors.Is(err, errStopping) {
		if j.inline {
			// Its caller is still here, on this goroutine: it sends the
			// request itself, having set up to wait for the bus's reply.
			return false
		}
		if err = r.handBack(breq); errors.Is(err, errHandedBack) {
			return true
		}
	}
	if async {
		return true
	}
	if j.inline && !breq.Deadline.IsZero() && time.Until(breq.Deadline) <= 0 {
		// The function held its caller past the deadline: as a caller
		// waiting for a worker's reply would have, it gets no outcome but
		// the deadline's. (The function ran; a result it stored under an
		// idempotency key stays, as over the bus.)
		err = fnmesh.Errorf(fnmesh.CodeDeadlineExceeded, "no result from %s.%s within its deadline", r.svc.name, breq.Function)
		result, value = nil, nil
	}
	rep := &bus.Reply{ID: breq.ID, Replica: r.id, Payload: result, Value: value}
	if err != nil {
		rep.Err, rep.Payload = wireError(err), nil
	}
	j.deliver(rep)
	return true
}

// wireError is the error as its caller would receive it over the bus: a
// code, a message and field violations, no local cause.
func wireError(err error) *fnmesh.Error {
	e := asMeshError(err)
	return &fnmesh.Error{Code: e.Code, Message: e.Message, Fields: e.Fields}
}

// runLocal checks and runs an in-process request as handle does one read
// from the bus. A call returns its encoded result or error; a send is
// retried and dead-lettered as over the bus. A call's result of a plain
// type comes back as its Go value instead (plainType).
func (r *replica) runLocal(req *Request, async bool) ([]byte, any, error) {
	breq := req.wire
	if len(breq.Payload) > r.svc.cfg.MaxPayloadBytes {
		return nil, nil, r.rejectLocal(breq, fnmesh.Errorf(fnmesh.CodeInvalidArgument,
			"arguments of %d bytes exceed the limit of %d", len(breq.Payload), r.svc.cfg.MaxPayloadBytes))
	}
	if breq.Value == nil && len(breq.Payload) > 0 && !json.Valid(breq.Payload) {
		return nil, nil, r.rejectLocal(breq, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "%v: field %q is not valid JSON", bus.ErrMalformed, bus.FieldPayload))
	}
	f := r.svc.funcs[breq.Function] // read-only once the replica runs
	if f == nil {
		return nil, nil, r.rejectLocal(breq, fnmesh.Errorf(fnmesh.CodeNotFound, "function %s.%s not found", r.svc.name, breq.Function))
	}
	if !breq.Deadline.IsZero() && time.Until(breq.Deadline) <= 0 {
		e := fnmesh.NewError(fnmesh.CodeDeadlineExceeded, "deadline passed before the request was run")
		if async {
			r.deadLetter(&bus.DeliveredRequest{Request: *breq}, e, 0)
		}
		return nil, nil, e
	}
	req.ID, req.Service, req.Function, req.Payload = breq.ID, r.svc.name, breq.Function, breq.Payload
	req.Token, req.Caller, req.Deadline = breq.Token, breq.Caller, breq.Deadline
	req.Async, req.Attempt, req.Replica, req.fn = async, 1, r.id, f
	req.TraceParent, req.IdempotencyKey = breq.TraceParent, breq.IdempotencyKey
	if async {
		r.sendLocal(f, req, breq)
		return nil, nil, nil
	}
	if breq.IdempotencyKey != "" {
		result, err := r.callOnceLocal(f, req, breq)
		return result, nil, err
	}
	out, err := r.callLocal(f, req)
	if err != nil {
		return nil, nil, err
	}
	if f.outPlain && out != nil && reflect.TypeOf(out) == f.outType {
		return nil, out, nil
	}
	result, err := encodeLocal(out)
	return result, nil, err
}

// callLocal runs a call.
func (r *replica) callLocal(f *function, req *Request) (any, error) {
	out, err := r.invoke(f, req)
	if err != nil && r.hardCtx.Err() != nil {
		return nil, errStopping
	}
	return out, err
}

// errHandedBack: the call went to the bus, its reply comes from there.
var errHandedBack = errors.New("handed to the bus")

// handBack sends a call the drain timeout cut short over the bus, as a
// replica reading the bus hands its request back: another replica runs
// it and answers the caller's inbox, where the caller waits.
func (r *replica) handBack(breq *bus.Request) error {
	req := *breq
	req.Value, req.Failed = nil, nil
	if err := r.bus.SendRequest(context.WithoutCancel(r.hardCtx), r.svc.name, &req); err != nil {
		return fnmesh.Errorf(fnmesh.CodeUnavailable, "replica %s stopped before %s.%s finished, and the bus refused it: %v", r.id, r.svc.name, breq.Function, err)
	}
	return errHandedBack
}

// encodeLocal encodes a call's result as a reply over the bus carries it.
func encodeLocal(out any) ([]byte, error) {
	result, merr := marshalResult(out)
	if merr != nil {
		return nil, fnmesh.Errorf(fnmesh.CodeInternal, "result is not JSON-encodable: %v", merr)
	}
	return result, nil
}

// callOnceLocal runs an in-process call that carries an idempotency key
// as runOnce does one read from the bus: the function's chain checks the
// key (after the token check, the access rule and the function's
// requirements; scoped to the function and the caller's subject; refused
// with other arguments), in the same store, so a key is shared with
// requests that came over the bus. The key is settled before the caller
// learns the outcome.
func (r *replica) callOnceLocal(f *function, req *Request, breq *bus.Request) ([]byte, error) {
	req.idem = &idemRun{ctx: r.hardCtx, store: r.idem, owner: localOwner(breq), window: r.svc.cfg.IdempotencyWindow}
	out, err := r.callLocal(f, req)
	if errors.Is(err, errStopping) {
		req.idem.settle(r.svc.name, r.log, false, nil) // the bus replica takes the key
		return nil, errStopping
	}
	if errors.Is(err, errIdemStore) {
		// Over the bus the entry would be delivered again; here the
		// caller is told, and may repeat the call.
		r.log.Error("in-process request not run", "err", err)
		return nil, fnmesh.Errorf(fnmesh.CodeUnavailable, "%s.%s: %v", r.svc.name, breq.Function, err)
	}
	var result []byte
	if err == nil {
		result, err = encodeLocal(out)
	}
	if err != nil {
		req.idem.settle(r.svc.name, r.log, false, nil)
		return nil, err
	}
	req.idem.settle(r.svc.name, r.log, true, result)
	return result, nil
}

// localOwner names an in-process request in the idempotency store, where
// a request read from the bus is named by its stream entry id.
func localOwner(breq *bus.Request) string { return "local:" + breq.Caller + ":" + breq.ID }

// sendLocal runs an in-process send with the retry policy, dead-lettering
// it when it keeps failing. A send the drain timeout cut short is handed to
// the bus, where another replica runs it.
func (r *replica) sendLocal(f *function, req *Request, breq *bus.Request) {
	// Not from a subscription: nothing to settle, and a dead letter is
	// made of the request.
	dr := &bus.DeliveredRequest{Request: *breq, Delivery: bus.Delivery{EntryID: localOwner(breq), Count: 1}}
	var err error
	if breq.IdempotencyKey != "" {
		err = r.runOnce(dr, f, req, breq)
	} else {
		err = r.run(dr, f, req, breq)
	}
	if err == nil {
		return
	}
	// Stopping, or an outcome that could not be recorded: over the bus the
	// entry would be delivered again. Here it is queued on the bus.
	if perr := r.bus.SendRequest(r.hardCtx, r.svc.name, breq); perr != nil {
		r.log.Error("in-process send could not be handed to the bus; it is lost", "function", req.Function, "id", req.ID, "err", perr)
	}
}

// rejectLocal records a request that cannot run as a dead letter, as
// reject does for one read from the bus, and returns e for its caller.
func (r *replica) rejectLocal(breq *bus.Request, e *fnmesh.Error) error {
	r.log.Warn("rejected request", "code", e.Code, "reason", e.Message, "id", breq.ID)
	if err := r.deadLetter(&bus.DeliveredRequest{Request: *breq}, e, 0); err != nil {
		r.log.Error("could not record a rejected in-process request", "err", err)
	}
	return e
}

// SetColocated records which services this process hosts, s among them
// (placement.New sets it): calls between them run in-process. Replicas
// started after it report it to plugins (ReplicaInfo.Colocated), so the
// registry shows how each replica is reached.
func (s *Service) SetColocated(services []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.colocated = append([]string(nil), services...)
}

func (s *Service) colocatedWith() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.colocated
}

var (
	jsonMarshaler   = reflect.TypeFor[json.Marshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textMarshaler   = reflect.TypeFor[encoding.TextMarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// plainType reports whether a value of t, copied by Go assignment, is
// what encoding it to JSON and decoding it again would give: booleans,
// numbers, strings, and arrays and structs of them whose fields are all
// exported, named, not skipped, with no JSON or text methods. Such values
// share no memory once copied (no pointer, slice, map or interface).
// In-process calls pass them as they are; other types go through JSON,
// as over the bus. (One difference remains: a string that is not valid
// UTF-8 arrives unchanged, where JSON replaces its bad bytes by U+FFFD.)
func plainType(t reflect.Type) bool {
	for _, m := range []reflect.Type{jsonMarshaler, jsonUnmarshaler, textMarshaler, textUnmarshaler} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return false
		}
	}
	switch t.Kind() {
	case reflect.Bool, reflect.String,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	case reflect.Array:
		return plainType(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() || f.Anonymous || f.Tag.Get("json") == "-" || !plainType(f.Type) {
				return false
			}
		}
		return true
	}
	return false
}
