package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/jsondec"
	"github.com/fnmesh/fnmesh/registry"
)

// Config configures a Client. Zero values take the defaults written on
// each field.
type Config struct {
	// Name says who calls, in replicas' logs. Default host-pid.
	Name string
	// Token is sent with every call that has no WithToken.
	Token string
	// Timeout bounds calls whose context has no deadline and that have no
	// WithTimeout. Default 10s.
	Timeout time.Duration
	// MaxPayloadBytes rejects larger arguments before sending them.
	// Default 1 MiB, as on the service side.
	MaxPayloadBytes int
	// Breaker configures the breaker in front of each target function.
	Breaker BreakerConfig
	// Logger receives the client's logs. Default slog.Default().
	Logger *slog.Logger
	// Interceptors wrap every Call and Send, the first outermost, outside
	// the breaker: for metrics, tracing, discovery checks.
	Interceptors []Interceptor
	// BacklogCheck is how often the client re-reads a target service's
	// backlog and the bound its replicas published (handlers.Config
	// MaxBacklog); past the bound, Call and Send fail at once with
	// resource_exhausted. Default 100ms; negative turns the check off.
	BacklogCheck time.Duration
	// SkipRegistryCheck sends every Call and Send without checking the
	// registry first. By default a client fails a call at once with
	// not_found when no replica ever served the function, and with
	// unavailable when one did lately but none is alive now (a Send is
	// queued then, for the next replica). Set it for callers that may not
	// read the registry (ACLs), or whose targets do not announce
	// themselves (handlers.Config.NoDiscovery).
	SkipRegistryCheck bool
	// Registry is the cached view of the registry the check reads,
	// shared by clients that pass the same one. Default: one per client.
	Registry *registry.Watcher
	// Local, when set, are the services hosted in this process
	// (placement.Process): a Call to one of them runs on its replica
	// here, in-process, through the same checks as over the bus; calls to
	// other services, and calls a full or draining local replica cannot
	// take, go over the bus. Default nil: every call goes over the bus.
	Local LocalServices
	// LocalSends runs a Send to a service in Local in-process too. It is
	// an opt-in: such a send is held in this process's memory, not in
	// Redis, and is lost if the process dies before it ran; other
	// replicas never see it. By default a Send always goes over the bus,
	// durable once Send returns.
	LocalSends bool
	// StatusTTL is how long the status record of a Send (see fnmesh
	// status) outlives its last change; the client writes "queued" once
	// the request is stored. Default registry.DefaultStatusTTL; negative
	// writes none (and saves a round trip per Send).
	StatusTTL time.Duration
}

func (c *Config) setDefaults() {
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = 1 << 20
	}
	if c.BacklogCheck == 0 {
		c.BacklogCheck = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Breaker.setDefaults()
}

// Validate reports every problem with c (after defaults).
func (c Config) Validate() error {
	var errs []error
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("client: Config.Timeout is %v, want more than 0", c.Timeout))
	}
	if c.MaxPayloadBytes < 1 {
		errs = append(errs, fmt.Errorf("client: Config.MaxPayloadBytes is %d, want at least 1", c.MaxPayloadBytes))
	}
	if c.Breaker.OpenTimeout < 0 {
		errs = append(errs, fmt.Errorf("client: Config.Breaker.OpenTimeout is %v, want more than 0", c.Breaker.OpenTimeout))
	}
	return errors.Join(errs...)
}

// Client calls functions over a bus. It is safe for concurrent use.
type Client struct {
	cfg      Config
	bus      bus.Bus
	inbox    string // reply topic
	open     bus.Inbox
	idPrefix string
	seq      atomic.Uint64

	// waiting holds the calls waiting for their reply, by request id, in
	// shards: every call and every reply takes a shard's lock, and callers
	// on all cores would otherwise queue on one.
	waiting [waitShards]waitShard
	closed  atomic.Bool
	waiters sync.Pool // of *waiter of this client

	breakers sync.Map // function name -> *breaker
	invoker  Invoker  // interceptors around send
	admit    *admission
	dir      *directory // nil: calls are not checked against the registry
	// deliverFn is c.deliver, made once: the inbox hands it every reply.
	deliverFn func(*bus.Reply)
	// inline is Config.Local when it tells which calls run on the
	// caller's goroutine (placement.Process does).
	inline inlineServices
	// invocations recycles the Invocations of calls answered in-process
	// when no interceptor of the caller's sees them (pooled is set):
	// nothing else holds one once its call returned.
	invocations sync.Pool
	pooled      bool
}

const waitShards = 32

type waitShard struct {
	mu sync.Mutex
	m  map[string]*waiter
	_  [40]byte // a cache line each
}

func (c *Client) shard(id string) *waitShard {
	h := uint32(2166136261) // FNV-1a over the id's tail: its sequence number
	for i := max(0, len(id)-8); i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return &c.waiting[h%waitShards]
}

// waiter is a call waiting for its reply. Waiters are pooled, per client:
// a reply is handed to one (deliver, fail) only under its shard's lock
// while it is in the shard, so once a call has taken it out no late reply
// or failure reaches the next call that uses it.
type waiter struct {
	c      *Client
	id     string                    // the request id, while waiting; under in's lock
	in     atomic.Pointer[waitShard] // the shard holding it, while waiting
	ch     chan *bus.Reply           // the reply, or the failure to queue the request
	failed func(error)               // w.fail, made once
	// An in-process replica hands the reply straight to the waiter
	// (direct, w.take, made once), not through the shard. Such a waiter
	// goes back to the pool only once took is set: before, the replica
	// may still hand it a reply, which must not reach the next call.
	direct func(*bus.Reply)
	took   atomic.Bool
}

// take is the reply of the waiter's in-process call.
func (w *waiter) take(rep *bus.Reply) {
	select {
	case w.ch <- rep:
	default: // it has one already: Close failed the call
	}
	w.took.Store(true) // last: the waiter may be reused from here on
}

// fail hands the call a failure to store its request (Request.Failed).
func (w *waiter) fail(err error) {
	sh := w.in.Load()
	if sh == nil {
		return
	}
	sh.mu.Lock()
	if w.in.Load() == sh && sh.m[w.id] == w {
		handTo(w, &bus.Reply{ID: w.id, Err: queueError(err)})
	}
	sh.mu.Unlock()
}

// New returns a client on b with its own reply inbox.
func New(b bus.Bus, cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var rb [12]byte // unguessable: a reply-to names an inbox (docs/SECURITY.md)
	rand.Read(rb[:])
	id := hex.EncodeToString(rb[:])
	c := &Client{
		cfg: cfg, bus: b, inbox: bus.InboxTopic(b, id),
		idPrefix: id + "-",
	}
	for i := range c.waiting {
		c.waiting[i].m = map[string]*waiter{}
	}
	c.waiters.New = func() any {
		w := &waiter{c: c, ch: make(chan *bus.Reply, 1)}
		w.failed, w.direct = w.fail, w.take
		return w
	}
	c.deliverFn = c.deliver
	c.inline, _ = cfg.Local.(inlineServices)
	c.pooled = len(cfg.Interceptors) == 0
	c.invocations.New = func() any { return new(Invocation) }
	open, err := b.OpenInbox(context.Background(), c.inbox, c.deliverFn)
	if err != nil {
		return nil, fnmesh.Wrap(fnmesh.CodeUnavailable, fmt.Errorf("client: open reply inbox: %w", err))
	}
	c.open = open
	if c.dir, err = newDirectory(b, cfg); err != nil {
		open.Close()
		return nil, err
	}
	c.admit = newAdmission(b, cfg.BacklogCheck)
	c.invoker = c.dir.wrap(c.send, cfg.Local, c.isClosed)
	for i := len(cfg.Interceptors) - 1; i >= 0; i-- {
		c.invoker = cfg.Interceptors[i](c.invoker)
	}
	return c, nil
}

// Inbox returns the topic (reply stream) this client reads replies from.
func (c *Client) Inbox() string { return c.inbox }

// deliver hands a reply to the call waiting for it; the inbox calls it
// for each reply. Replies nobody waits for (the call timed out) are
// dropped.
func (c *Client) deliver(rep *bus.Reply) {
	sh := c.shard(rep.ID)
	sh.mu.Lock()
	if w := sh.m[rep.ID]; w != nil {
		handTo(w, rep)
	}
	sh.mu.Unlock()
}

// handTo gives w its reply; the caller holds the lock of w's shard.
func handTo(w *waiter, rep *bus.Reply) {
	select {
	case w.ch <- rep:
	default: // it has one already: a duplicate reply (a request run twice)
	}
}

// isClosed reports whether Close ran: a closed client answers unavailable
// before it asks the registry anything.
func (c *Client) isClosed() bool { return c.closed.Load() }

// Close fails the calls still waiting with unavailable and removes the
// client's inbox.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	// A call registering now either saw closed, or is in its shard
	// before Close locks that shard.
	for i := range c.waiting {
		sh := &c.waiting[i]
		sh.mu.Lock()
		for _, w := range sh.m {
			handTo(w, &bus.Reply{ID: w.id, Err: errClosed()})
		}
		sh.mu.Unlock()
	}
	c.dir.close()
	return c.open.Close()
}

// validService reports whether s is a service name: ^[a-z0-9][a-z0-9_-]{0,62}$,
// checked by hand because it runs on every call (a regexp was 0.7% of a
// call's CPU).
func validService(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// SplitName splits "service.function" at its first dot.
func SplitName(name string) (service, function string, err error) {
	service, function, ok := strings.Cut(name, ".")
	if !ok || function == "" || !validService(service) {
		return "", "", fnmesh.Errorf(fnmesh.CodeInvalidArgument, "function name %q: want service.function, e.g. math.add", name)
	}
	return service, function, nil
}

func encodeArgs(in any) ([]byte, error) {
	switch v := in.(type) {
	case json.RawMessage:
		return v, nil
	case []byte:
		if !json.Valid(v) {
			return nil, fnmesh.NewError(fnmesh.CodeInvalidArgument, "arguments given as []byte are not valid JSON")
		}
		return v, nil
	}
	b, err := json.Marshal(in)
	if err != nil {
		return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "arguments are not JSON-encodable: %v", err)
	}
	return b, nil
}

func (c *Client) newInvocation(function string, in any, o *callOptions, async bool) (*Invocation, error) {
	service, fn, err := SplitName(function)
	if err != nil {
		return nil, err
	}
	payload, err := encodeArgs(in)
	if err != nil {
		return nil, err
	}
	_, borrowed := in.([]byte)
	if raw, ok := in.(json.RawMessage); ok {
		borrowed = len(raw) > 0
	}
	if len(payload) > c.cfg.MaxPayloadBytes {
		return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "arguments of %d bytes exceed the limit of %d", len(payload), c.cfg.MaxPayloadBytes)
	}
	id := o.requestID
	if id == "" {
		// One allocation: the prefix and the sequence number appended.
		var b [64]byte
		id = string(strconv.AppendUint(append(b[:0], c.idPrefix...), c.seq.Add(1), 36))
	}
	inv := c.invocations.Get().(*Invocation)
	*inv = Invocation{
		ID: id, Function: function, Service: service, Name: fn, Args: payload,
		Token: o.token, Async: async, IdempotencyKey: o.idempotencyKey,
		argsBorrowed: borrowed, argValue: marshalled(in, borrowed),
	}
	return inv, nil
}

// release recycles inv once its call returned, when nothing can still
// hold it: no interceptor saw it, and its request went to a replica in
// this process (which copies it, or ran it before Dispatch returned),
// not to a bus that may still be writing it.
func (c *Client) release(inv *Invocation) {
	if c.pooled && inv.inProcess {
		*inv = Invocation{}
		c.invocations.Put(inv)
	}
}

func (c *Client) options(opts []CallOption) callOptions {
	if len(opts) == 0 {
		// No option to hand the options to: they stay on the stack.
		return callOptions{token: c.cfg.Token}
	}
	o := &callOptions{token: c.cfg.Token}
	for _, opt := range opts {
		opt(o)
	}
	if o.asService {
		o.token = c.cfg.Token
	}
	return *o
}

// Call runs function ("service.function") with in as its arguments and
// decodes the result into out (a pointer, or nil to ignore it). It
// returns a *fnmesh.Error: the function's own, or one of the mesh's
// codes. It never waits past its deadline: WithTimeout, else ctx's
// deadline, else Config.Timeout, whichever is first.
func (c *Client) Call(ctx context.Context, function string, in, out any, opts ...CallOption) error {
	o := c.options(opts)
	inv, err := c.newInvocation(function, in, &o, false)
	if err != nil {
		return err
	}
	timeout := o.timeout
	if timeout <= 0 {
		timeout = c.cfg.Timeout
	}
	begun := time.Now()
	inv.Deadline = begun.Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(inv.Deadline) {
		inv.Deadline = dl
	}
	inv.allowed = inv.Deadline.Sub(begun)
	result, err := c.invoker(ctx, inv)
	if o.info != nil {
		*o.info = ReplyInfo{RequestID: inv.ID, Replica: inv.Replica}
	}
	value := inv.resultValue
	c.release(inv)
	if err == nil && value != nil {
		return takeValue(function, value, out)
	}
	if err != nil || out == nil {
		return err
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], result...)
		return nil
	}
	if err := jsondec.Unmarshal(result, out); err != nil {
		return fnmesh.Errorf(fnmesh.CodeInternal, "result of %s does not decode into %T: %v", function, out, err)
	}
	return nil
}

// Send queues a run of function with in as its arguments and returns once
// the request is stored on the bus (on Redis: XADD acknowledged). The
// function runs as a Call would, its result dropped; if it fails, the
// service retries it and then records it on its dead-letter stream.
func (c *Client) Send(ctx context.Context, function string, in any, opts ...CallOption) error {
	o := c.options(opts)
	inv, err := c.newInvocation(function, in, &o, true)
	if err != nil {
		return err
	}
	if o.timeout > 0 {
		inv.Deadline = time.Now().Add(o.timeout)
	}
	_, err = c.invoker(ctx, inv)
	if err == nil && o.info != nil {
		*o.info = ReplyInfo{RequestID: inv.ID}
	}
	c.release(inv)
	return err
}

// send is the innermost Invoker: the backlog bound, the breaker, then the
// bus.
func (c *Client) send(ctx context.Context, inv *Invocation) (json.RawMessage, error) {
	if l := c.local(inv); l != nil {
		return c.sendLocal(ctx, inv, l)
	}
	if err := c.admit.admit(ctx, inv.Service); err != nil {
		return nil, err
	}
	if c.cfg.Breaker.Disabled {
		return c.transport(ctx, inv)
	}
	var result json.RawMessage
	var err error
	var start time.Time
	ran, berr := c.breaker(inv.Function).guard(func() error {
		start = time.Now()
		result, err = c.transport(ctx, inv)
		return err
	}, func(err error) bool {
		// The caller allowed too little time to tell.
		return fnmesh.CodeOf(err) == fnmesh.CodeDeadlineExceeded && inv.Deadline.Sub(start) < c.cfg.Breaker.MinTimeout
	})
	if !ran {
		return nil, breakerOpen(inv.Function, berr)
	}
	return result, err
}

func (c *Client) transport(ctx context.Context, inv *Invocation) (json.RawMessage, error) {
	req := &inv.wire
	*req = bus.Request{
		ID: inv.ID, Function: inv.Name, Payload: inv.Args, Deadline: inv.Deadline, Token: inv.Token,
		Caller: c.cfg.Name, TraceParent: inv.TraceParent, IdempotencyKey: inv.IdempotencyKey,
	}
	if inv.Async {
		return nil, c.publish(ctx, inv.Service, req)
	}
	req.ReplyTo = c.inbox
	rep, _, err := c.roundTripVia(ctx, inv.Service, req, inv.Function, nil)
	if rep != nil {
		inv.Replica = rep.Replica
	}
	if err != nil {
		return nil, err
	}
	return rep.Payload, nil
}

// roundTripVia publishes req, or hands it to local when a replica there
// takes it, and waits for its reply. A reply carrying an error is
// returned as that error. inProcess reports that a replica in this
// process took req and holds it no more (it copied it, or answered
// before Dispatch returned).
func (c *Client) roundTripVia(ctx context.Context, service string, req *bus.Request, function string, local LocalServices) (_ *bus.Reply, inProcess bool, _ error) {
	if local != nil && c.inline != nil && c.inline.Inline(service, req.Function) {
		if rep, ran, done, err := c.callInline(ctx, service, req, function, local); ran {
			return rep, done, err
		}
		// Not taken here: it waits in the bus like any call.
		if err := c.admit.admit(ctx, service); err != nil {
			return nil, false, err
		}
		local = nil
	}
	return c.roundTrip(ctx, service, req, function, local)
}

// roundTrip is roundTripVia for a call that takes a place among the
// calls waiting for a reply.
func (c *Client) roundTrip(ctx context.Context, service string, req *bus.Request, function string, local LocalServices) (_ *bus.Reply, inProcess bool, _ error) {
	w := c.waiters.Get().(*waiter)
	sh := c.shard(req.ID)
	sh.mu.Lock()
	if c.closed.Load() {
		sh.mu.Unlock()
		c.waiters.Put(w)
		return nil, false, errClosed()
	}
	w.in.Store(sh) // before w.id: fail reads w.id only under w.in's lock
	w.id = req.ID
	sh.m[req.ID] = w
	sh.mu.Unlock()
	defer func() {
		sh.mu.Lock()
		delete(sh.m, req.ID)
		w.id = ""
		w.in.Store(nil)
		sh.mu.Unlock()
		if inProcess && !w.took.Load() {
			return // its replica may still hand it the reply: not reused
		}
		select {
		case <-w.ch: // a reply that came with the deadline
		default:
		}
		w.took.Store(false)
		c.waiters.Put(w)
	}()

	// The caller waits once, for the reply or for a failure to store the
	// request, not first for the write and then for the reply.
	req.Failed = w.failed
	// A call taken in-process is answered to w.direct; one handed to the
	// bus later (its replica drained) is answered to the inbox, through
	// the shard.
	if inProcess = local != nil && local.Dispatch(ctx, service, req, w.direct) == nil; !inProcess {
		if local != nil {
			// Not taken in-process: it waits in the bus like any call.
			if err := c.admit.admit(ctx, service); err != nil {
				return nil, false, err
			}
		}
		// The bus bounds a write it waits for by req.Deadline.
		if err := c.publish(ctx, service, req); err != nil {
			return nil, false, err
		}
	}
	select {
	case rep := <-w.ch: // a call run on this goroutine (handlers.Inline)
		if ctx.Err() != nil {
			// Cancelled while it ran: the caller learns what it would
			// have learnt waiting for a worker.
			return nil, inProcess, contextError(ctx, function)
		}
		rep, err := replyOf(rep)
		return rep, inProcess, err
	default:
	}
	// A pooled timer, not a context per call: its timer, channel and
	// context are most of what a call allocates on the caller's side. It
	// starts after the request is handed over, which the deadline bounds
	// on its own, and only for a reply that is not here yet.
	deadline := deadlineTimers.Get().(*time.Timer)
	deadline.Reset(time.Until(req.Deadline))
	defer func() { deadline.Stop(); deadlineTimers.Put(deadline) }()
	select {
	case rep := <-w.ch:
		rep, err := replyOf(rep)
		return rep, inProcess, err
	case <-deadline.C:
		return nil, inProcess, deadlineError(function)
	case <-ctx.Done():
		return nil, inProcess, contextError(ctx, function)
	}
}

// replyOf returns rep, and its error as the call's.
func replyOf(rep *bus.Reply) (*bus.Reply, error) {
	if rep.Err != nil {
		return rep, rep.Err
	}
	return rep, nil
}

func errClosed() *fnmesh.Error { return fnmesh.NewError(fnmesh.CodeUnavailable, "client closed") }

// deadlineTimers are stopped timers, for roundTrip. (Since Go 1.23 a
// stopped timer's channel holds no stale tick, so Reset is safe.)
var deadlineTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

func deadlineError(function string) error {
	return fnmesh.Errorf(fnmesh.CodeDeadlineExceeded, "no result from %s within its deadline", function)
}

func contextError(ctx context.Context, function string) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return deadlineError(function)
	}
	return fnmesh.Errorf(fnmesh.CodeCanceled, "call of %s canceled: %w", function, ctx.Err())
}

func (c *Client) publish(ctx context.Context, service string, req *bus.Request) error {
	if err := c.bus.SendRequest(ctx, service, req); err != nil {
		if ctx.Err() != nil {
			return contextError(ctx, service+"."+req.Function)
		}
		if !req.Deadline.IsZero() && !time.Now().Before(req.Deadline) {
			return deadlineError(service + "." + req.Function)
		}
		return queueError(err)
	}
	return nil
}

func queueError(err error) *fnmesh.Error {
	var fe *fnmesh.Error
	if errors.As(err, &fe) { // the bus's own verdict, such as not_found
		return fe
	}
	return &fnmesh.Error{Code: fnmesh.CodeUnavailable, Message: "cannot queue request: " + err.Error()}
}

// Invoke is Call with the result returned typed.
func Invoke[Out any](ctx context.Context, c *Client, function string, in any, opts ...CallOption) (Out, error) {
	var out Out
	err := c.Call(ctx, function, in, &out, opts...)
	return out, err
}
