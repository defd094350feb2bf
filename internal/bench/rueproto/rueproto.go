// Package rueproto is fnmesh's call path written on rueidis instead of
// the bus's own RESP, to measure one against the other: the same
// commands in the same order and the same stream entries
// (docs/PROTOCOL.md), with rueidis pipelining concurrent commands on its
// own.
//
//   - a caller XADDs a request to the function's topic (NOMKSTREAM,
//     MAXLEN ~ when a bound is set) and reads its inbox with XREAD BLOCK,
//     matching replies to requests by id;
//   - a replica reads its service's stream with XREADGROUP BLOCK in the
//     group fnmesh, runs each request on its own goroutine, and answers
//     with XADD NOMKSTREAM MAXLEN ~ to the inbox and XACK, in one
//     round trip.
//
// It leaves out what a replica does beside the hot path (claiming,
// trimming, dead letters, keep-alive of the inbox), so its figures are
// those of the transport alone. internal/bench runs it beside the bus.
package rueproto

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/rueidis"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
)

// Config holds the bounds of the bus's RedisConfig the hot path uses,
// with the same defaults.
type Config struct {
	RequestMaxLen int64         // MAXLEN ~ of request streams; 0: none
	ReplyMaxLen   int64         // MAXLEN ~ of inboxes. Default 10000.
	Block         time.Duration // of each blocking read. Default 2s.
	ReadBatch     int64         // most entries an XREAD takes. Default 128.
	Concurrency   int           // requests a replica runs at once. Default 64.
	InboxTTL      time.Duration // of an inbox. Default 60s.
}

func (c *Config) setDefaults() {
	if c.ReplyMaxLen == 0 {
		c.ReplyMaxLen = 10000
	}
	if c.Block == 0 {
		c.Block = 2 * time.Second
	}
	if c.ReadBatch == 0 {
		c.ReadBatch = 128
	}
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.InboxTTL == 0 {
		c.InboxTTL = 60 * time.Second
	}
}

// NewClient connects to the Redis at url (redis:// or rediss://) with
// client-side caching off, as the bus needs none. maxFlushDelay is
// rueidis's ClientOption.MaxFlushDelay: how long a connection may wait
// for more commands before it writes (0: write at once).
func NewClient(url string, maxFlushDelay time.Duration) (rueidis.Client, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt.DisableCache = true
	opt.MaxFlushDelay = maxFlushDelay
	return rueidis.NewClient(opt)
}

// ErrNotServed is returned for a request to a service whose stream does
// not exist (XADD NOMKSTREAM answered nil): no replica ever ran.
var ErrNotServed = errors.New("rueproto: no replica serves this function")

// Caller sends requests and receives their replies on its own inbox.
type Caller struct {
	rc      rueidis.Client
	cfg     Config
	inbox   string
	seq     atomic.Uint64
	mu      sync.Mutex
	waiting map[string]chan *bus.Reply
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewCaller creates the inbox (a first entry "hello" and a TTL) and
// starts reading it.
func NewCaller(ctx context.Context, rc rueidis.Client, inbox string, cfg Config) (*Caller, error) {
	cfg.setDefaults()
	res := rc.DoMulti(ctx,
		rc.B().Arbitrary("XADD").Keys(inbox).Args("*", "hello", "inbox").Build(),
		rc.B().Pexpire().Key(inbox).Milliseconds(cfg.InboxTTL.Milliseconds()).Build())
	first, err := res[0].ToString()
	if err == nil {
		err = res[1].Error()
	}
	if err != nil {
		return nil, err
	}
	c := &Caller{rc: rc, cfg: cfg, inbox: inbox, waiting: map[string]chan *bus.Reply{}, done: make(chan struct{})}
	ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go c.read(ctx, first)
	return c, nil
}

func (c *Caller) read(ctx context.Context, last string) {
	defer close(c.done)
	for ctx.Err() == nil {
		cmd := c.rc.B().Xread().Count(c.cfg.ReadBatch).Block(c.cfg.Block.Milliseconds()).Streams().Key(c.inbox).Id(last).Build()
		streams, err := c.rc.Do(ctx, cmd).AsXReadSlices()
		if err != nil {
			if !rueidis.IsRedisNil(err) && ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
			}
			continue
		}
		for _, e := range streams[c.inbox] {
			last = e.ID
			rep, ok := decodeReply(e.FieldValues)
			if !ok {
				continue
			}
			c.mu.Lock()
			ch := c.waiting[rep.ID]
			delete(c.waiting, rep.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- rep
			}
		}
	}
}

// Call sends a request for function of service with the JSON arguments
// payload and waits for its reply until ctx ends. deadline, unless
// zero, is written in the request for the replica.
func (c *Caller) Call(ctx context.Context, service, function string, payload []byte, deadline time.Time) (*bus.Reply, error) {
	req := &bus.Request{ID: strconv.FormatUint(c.seq.Add(1), 36), Function: function, Payload: payload, ReplyTo: c.inbox, Deadline: deadline}
	ch := make(chan *bus.Reply, 1)
	c.mu.Lock()
	c.waiting[req.ID] = ch
	c.mu.Unlock()
	forget := func() { c.mu.Lock(); delete(c.waiting, req.ID); c.mu.Unlock() }
	err := c.rc.Do(ctx, xaddRequest(c.rc, bus.FunctionTopic(service, function), c.cfg.RequestMaxLen, req)).Error()
	if err != nil {
		forget()
		if rueidis.IsRedisNil(err) {
			return nil, ErrNotServed
		}
		return nil, err
	}
	select {
	case rep := <-ch:
		return rep, nil
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

// Close stops reading and deletes the inbox.
func (c *Caller) Close() error {
	c.cancel()
	<-c.done
	return c.rc.Do(context.Background(), c.rc.B().Del().Key(c.inbox).Build()).Error()
}

// xaddRequest is the bus's request XADD: fields in protocol order.
func xaddRequest(rc rueidis.Client, topic string, maxLen int64, r *bus.Request) rueidis.Completed {
	a := make([]string, 0, 24)
	a = append(a, "NOMKSTREAM")
	if maxLen > 0 {
		a = append(a, "MAXLEN", "~", strconv.FormatInt(maxLen, 10))
	}
	a = append(a, "*", bus.FieldVersion, bus.ProtocolVersion, bus.FieldID, r.ID, bus.FieldFunction, r.Function)
	a = appendIf(a, bus.FieldReplyTo, r.ReplyTo)
	if !r.Deadline.IsZero() {
		a = append(a, bus.FieldDeadline, strconv.FormatInt(r.Deadline.UnixMilli(), 10))
	}
	a = appendIf(a, bus.FieldCaller, r.Caller)
	a = appendIf(a, bus.FieldIdempotency, r.IdempotencyKey)
	a = appendIf(a, bus.FieldTraceParent, r.TraceParent)
	a = appendIf(a, bus.FieldToken, r.Token)
	if len(r.Payload) > 0 {
		a = append(a, bus.FieldPayload, string(r.Payload))
	}
	return rc.B().Arbitrary("XADD").Keys(topic).Args(a...).Build()
}

// xaddReply is the bus's reply XADD: NOMKSTREAM, as a reply must not
// recreate the inbox of a caller that is gone.
func xaddReply(rc rueidis.Client, inbox string, maxLen int64, r *bus.Reply) rueidis.Completed {
	a := make([]string, 0, 12)
	a = append(a, "NOMKSTREAM", "MAXLEN", "~", strconv.FormatInt(maxLen, 10), "*", bus.FieldID, r.ID)
	a = appendIf(a, bus.FieldReplica, r.Replica)
	if r.Err != nil {
		a = append(a, bus.FieldCode, string(r.Err.Code), bus.FieldMessage, r.Err.Message)
	} else {
		a = append(a, bus.FieldPayload, string(r.Payload))
	}
	return rc.B().Arbitrary("XADD").Keys(inbox).Args(a...).Build()
}

func appendIf(a []string, k, v string) []string {
	if v == "" {
		return a
	}
	return append(a, k, v)
}

// decodeReply reads a reply as the bus's inbox does: the first of a
// field given twice counts; an entry without id is not a reply.
func decodeReply(fvs []rueidis.XRangeFieldValue) (*bus.Reply, bool) {
	r := &bus.Reply{}
	var code, msg, payload string
	for _, fv := range fvs {
		var to *string
		switch fv.Field {
		case bus.FieldID:
			to = &r.ID
		case bus.FieldReplica:
			to = &r.Replica
		case bus.FieldCode:
			to = &code
		case bus.FieldMessage:
			to = &msg
		case bus.FieldPayload:
			to = &payload
		default:
			continue
		}
		if *to == "" {
			*to = fv.Value
		}
	}
	if r.ID == "" {
		return nil, false
	}
	if code != "" {
		r.Err = &fnmesh.Error{Code: fnmesh.Code(code), Message: msg}
	} else {
		r.Payload = []byte(payload)
	}
	return r, true
}

// Handler answers one request.
type Handler func(ctx context.Context, r *bus.Request) *bus.Reply

// Serve is one replica of service until ctx ends: it joins the group
// (making the stream if needed) and answers each request with handle.
// It returns when ctx ends and every request it took is answered.
func Serve(ctx context.Context, rc rueidis.Client, service, consumer string, cfg Config, handle Handler) error {
	cfg.setDefaults()
	topic := bus.RequestTopic(service)
	// From "0", as the bus: requests sent before any replica ran are served.
	err := rc.Do(ctx, rc.B().XgroupCreate().Key(topic).Group(bus.Group).Id("0").Mkstream().Build()).Error()
	if err != nil && !isBusyGroup(err) {
		return err
	}
	// A fixed pool of workers, one per request in flight, as a replica
	// of handlers.Service has.
	slots := make(chan struct{}, cfg.Concurrency)
	work := make(chan rueidis.XRangeSlice)
	answerCtx := context.WithoutCancel(ctx) // a request taken is answered
	var workers sync.WaitGroup
	defer func() { close(work); workers.Wait() }()
	for range cfg.Concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for e := range work {
				answer(answerCtx, rc, cfg, topic, consumer, e, handle)
				<-slots
			}
		}()
	}
	for {
		// As the bus does, ask for as many entries as there are free
		// slots, waiting for one when all are taken.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		n := int64(1)
	more:
		for n < cfg.ReadBatch {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		cmd := rc.B().Xreadgroup().Group(bus.Group, consumer).Count(n).Block(cfg.Block.Milliseconds()).Streams().Key(topic).Id(">").Build()
		streams, err := rc.Do(ctx, cmd).AsXReadSlices()
		entries := streams[topic]
		for i := int64(len(entries)); i < n; i++ {
			<-slots
		}
		if err != nil && !rueidis.IsRedisNil(err) {
			if ctx.Err() != nil {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, e := range entries {
			work <- e
		}
	}
}

// answer decodes one entry with the bus's decoder, runs it and writes
// the reply and the XACK in one round trip.
func answer(ctx context.Context, rc rueidis.Client, cfg Config, topic, consumer string, e rueidis.XRangeSlice, handle Handler) {
	m := message.NewMessage(e.ID, nil)
	for _, fv := range e.FieldValues {
		if fv.Field == bus.FieldPayload {
			m.Payload = []byte(fv.Value)
		} else {
			m.Metadata[fv.Field] = fv.Value
		}
	}
	ack := rc.B().Xack().Key(topic).Group(bus.Group).Id(e.ID).Build()
	var req bus.Request
	if err := bus.DecodeRequestInto(m, &req); err != nil {
		// The bus dead-letters a malformed request; here it is only acked.
		rc.Do(ctx, ack)
		return
	}
	rep := handle(ctx, &req)
	if req.ReplyTo == "" {
		rc.Do(ctx, ack)
		return
	}
	rep.ID, rep.Replica = req.ID, consumer
	// If the write fails the request stays pending: the bus claims and
	// runs it again, which this prototype leaves out.
	rc.DoMulti(ctx, xaddReply(rc, req.ReplyTo, cfg.ReplyMaxLen, rep), ack)
}

func isBusyGroup(err error) bool { return strings.HasPrefix(err.Error(), "BUSYGROUP") }
