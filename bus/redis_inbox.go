package bus

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
)

// OpenInbox implements Bus.
//
// It creates the reply stream with a first entry ("hello") and a TTL,
// reads it with XREAD from that entry on, handing each reply to deliver
// from the reading goroutine itself (no message, no hand-off), and
// refreshes the TTL while open; if the key vanished (Redis restarted
// empty), it is created again. Close deletes the key; if the process dies
// instead, the TTL removes it.
func (r *Redis) OpenInbox(ctx context.Context, topic string, deliver func(*Reply)) (Inbox, error) {
	if r.isClosed() {
		return nil, ErrClosed
	}
	in := &redisInbox{r: r, topic: topic, deliver: deliver}
	first, err := in.create(ctx)
	if err != nil {
		return nil, err
	}
	in.setLast(first)
	in.reader = r.newBlockingReader()
	in.reader.maxField = r.cfg.MaxReplyBytes
	ctx, in.cancel = context.WithCancel(context.WithoutCancel(ctx))
	r.track(in)
	in.loops.Add(2)
	go in.read(ctx, first)
	go in.keepAlive(ctx) // redis_inbox_keepalive.go
	go func() {
		select {
		case <-r.done:
		case <-ctx.Done():
		}
		in.cancel()
	}()
	return in, nil
}

type redisInbox struct {
	r       *Redis
	topic   string
	deliver func(*Reply)
	reader  *blockingReader
	cancel  context.CancelFunc
	loops   sync.WaitGroup
	// lastRead is the id of the last entry read, under mu: a string
	// stored in an atomic.Value would be boxed, one allocation per read.
	mu       sync.Mutex
	lastRead string
	once     sync.Once
}

func (in *redisInbox) create(ctx context.Context) (string, error) {
	pipe := in.r.rdb.TxPipeline()
	add := pipe.XAdd(ctx, &redis.XAddArgs{Stream: in.topic, Values: []any{"hello", "inbox"}})
	pipe.PExpire(ctx, in.topic, in.r.cfg.InboxTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return "", err
	}
	return add.Val(), nil
}

func (in *redisInbox) read(ctx context.Context, last string) {
	defer in.loops.Done()
	var backoff readBackoff
	for ctx.Err() == nil {
		es, err := in.reader.read(ctx, in.topic, last, in.r.cfg.ReadBatch, in.r.cfg.BlockTime)
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			in.reader.failed(err)
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		for _, e := range es {
			last = e.ID
			if _, hello := e.Get("hello"); hello {
				continue
			}
			if rep, err := decodeReply(e); err == nil {
				in.deliver(rep)
			}
		}
		if len(es) > 0 && len(es) <= yieldBatch {
			runtime.Gosched() // let the callers just answered run first (see groupSubscription.readLoop)
		}
		in.setLast(last)
	}
}

func (in *redisInbox) setLast(id string) {
	in.mu.Lock()
	in.lastRead = id
	in.mu.Unlock()
}

func (in *redisInbox) last() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.lastRead
}

// Close implements Inbox.
func (in *redisInbox) Close() error {
	in.once.Do(func() {
		stopReaders([]context.CancelFunc{in.cancel}, []*blockingReader{in.reader}, &in.loops)
		in.r.untrack(in)
	})
	in.loops.Wait()
	return nil
}

// SendRequest implements Bus.
func (r *Redis) SendRequest(ctx context.Context, service string, req *Request) error {
	if r.isClosed() {
		return ErrClosed
	}
	p := r.comb.command()
	xaddRequest(&p.cmd, service, req.Function, r.cfg.RequestMaxLen)
	req.appendFields(&p.cmd)
	p.request = true
	switch {
	case r.cfg.NoAutoPipeline:
		if !req.Deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, req.Deadline)
			defer cancel()
		}
		err := r.doDirect(ctx, p)
		if errors.Is(err, redis.Nil) {
			return notServed(FunctionTopic(service, req.Function))
		}
		return err
	case req.Failed != nil:
		return r.comb.doAsync(p, req.Failed)
	}
	return r.comb.do(ctx, p)
}

// doDirect runs p on its own round trip (NoAutoPipeline).
func (r *Redis) doDirect(ctx context.Context, p *pendingCmd) error {
	err := r.rdb.Do(ctx, p.cmd.Args()...).Err()
	p.release()
	return err
}

// SendReply implements Bus.
func (r *Redis) SendReply(ctx context.Context, inbox string, rep *Reply) error {
	if r.isClosed() {
		return ErrClosed
	}
	// The reply stream belongs to its caller: if it is gone, so is the
	// caller, and the reply must not recreate the key.
	p := r.comb.command()
	p.cmd.XAdd(inbox, true, r.cfg.ReplyMaxLen)
	rep.appendFields(&p.cmd)
	req := answeredBy(rep)
	d := req.delivery()
	ackTopic, ackID := "", ""
	if req.direct(d) && !r.cfg.NoAutoPipeline {
		ackTopic, ackID = d.topic, d.EntryID
	}
	// A reply with its request's ack settles that request once written
	// (see Bus.SendReply): the worker takes its next request meanwhile,
	// instead of waiting for a flush in progress and being woken by it.
	if ackTopic != "" && req.settlesByReply(true) {
		p.replica = rep.Replica
		m := req.m
		if req.r != nil {
			m = settledByDelivery // d names the request
		}
		err := r.comb.doSettled(p, m, d)
		if err != nil {
			req.settlesByReply(false) // not queued: the consumer settles it
		}
		return err
	}
	var err error
	if r.cfg.NoAutoPipeline {
		err = r.doDirect(ctx, p)
	} else {
		// If the reply fails and the ack in its round trip did not, the
		// request stays delivered here and is run again by this replica;
		// only a replica dying before that leaves its caller to its
		// deadline.
		err = r.comb.doInline(ctx, p, ackTopic, ackID)
	}
	if unwritable(err) {
		// The request ends here, not in an endless retry: a dead letter
		// with the reason, then its ack. A reply without its request
		// (a rejection, whose request its sender dead-letters) is dropped.
		if !req.none() {
			if derr := r.deadLetterUnwritable(ctx, req.message(), d, inbox, rep.Replica, err); derr != nil {
				return derr
			}
		}
		err = nil
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	switch {
	case ackTopic != "":
		req.ackSent(d)
	case !req.none():
		req.settle(true)
	}
	return nil
}

// unwritable reports an error of a reply's XADD that writing it again
// cannot cure: the reply-to is a key of another type (WRONGTYPE), a
// stream that takes no more entries (ERR ... last possible ID), or one
// this user may not write (NOPERM). Lost connections, failovers and a
// full or loading server are worth another try.
func unwritable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || !isRedisError(err) || lostMaster(err) {
		return false
	}
	msg := err.Error()
	for _, transient := range []string{"TRYAGAIN", "BUSY", "CLUSTERDOWN", "OOM", "MOVED", "ASK", "NOREPLICAS"} {
		if strings.HasPrefix(msg, transient) {
			return false
		}
	}
	return true
}

// deadLetterMessage is the dead letter of request m whose reply to inbox
// failed with err for good.
func deadLetterMessage(m *message.Message, d Delivery, inbox, replica string, err error) *message.Message {
	return NewDeadLetterMessage(m, d.EntryID, replica, fnmesh.CodeInternal,
		fmt.Sprintf("the reply cannot be written to %s: %v", inbox, err), max(d.Count, 1))
}

// deadLetterUnwritable records request m, whose reply cannot be written,
// on its service's dead letters, and waits for that.
func (r *Redis) deadLetterUnwritable(ctx context.Context, m *message.Message, d Delivery, inbox, replica string, err error) error {
	svc := serviceOfTopic(d.topic)
	if svc == "" {
		return err
	}
	dl := deadLetterMessage(m, d, inbox, replica, err)
	return r.xadd(ctx, &redis.XAddArgs{Stream: DeadLetterTopic(svc), MaxLen: r.cfg.DeadLetterMaxLen, Approx: true, Values: entryValues(dl.Metadata, dl.Payload)})
}

// replyWritten settles the request a reply p answers, once the round
// trip carrying the reply (and the request's XACK) is over: acked if the
// reply was written (or its caller's inbox is gone); if it cannot ever
// be written, acked once its dead letter is stored; else nacked, to be
// delivered again (here, or elsewhere if this replica stops), which
// counts as a delivery.
func (c *combiner) replyWritten(p *pendingCmd) {
	d, err := p.delivery, p.err
	req := answeredIn(p.settles, d)
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		req.ackSent(d)
	case unwritable(err) && serviceOfTopic(d.topic) != "":
		dl := deadLetterMessage(req.message(), d, p.cmd.Stream(), p.replica, err)
		q := c.command()
		q.cmd.XAdd(DeadLetterTopic(serviceOfTopic(d.topic)), false, c.deadMaxLen)
		for _, v := range entryValues(dl.Metadata, dl.Payload) {
			q.cmd.ArgAny(v)
		}
		// Runs on the flushing goroutine: the dead letter goes out with
		// the next round trip, and settles m after it.
		c.doThen(q, func(err error) {
			if err != nil {
				req.settle(false)
				return
			}
			req.ackSent(d)
		})
	default:
		req.settle(false)
	}
}

// xadd adds one entry (MAXLEN is approximate), sharing a round trip with
// concurrent writes.
func (r *Redis) xadd(ctx context.Context, a *redis.XAddArgs) error {
	if r.cfg.NoAutoPipeline {
		return r.rdb.XAdd(ctx, a).Err()
	}
	p := r.comb.command()
	p.cmd.XAdd(a.Stream, a.NoMkStream, a.MaxLen)
	for _, v := range a.Values.([]any) {
		p.cmd.ArgAny(v)
	}
	return r.comb.do(ctx, p)
}
