package bus

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// combiner sends commands from many goroutines in shared round trips.
// The first caller to find no flush in progress starts a flusher: it
// writes that command together with every command queued meanwhile, in
// one pipeline, and goes on while commands keep queuing. Under load
// commands queue while a round trip is in flight and go out together in
// the next. Every caller, the one that started the flusher included,
// waits only as long as its ctx allows: when Redis stops answering, a
// round trip can take go-redis's dial timeouts and retries, and a call
// must still end at its deadline.
//
// Acks (XACK) queue apart, by stream, and go out as one XACK per stream
// after the commands of the same round trip: an ack queued with a reply
// (doInline) goes out with it.
type combiner struct {
	rdb      redis.UniversalClient
	conn     *redis.Conn   // owned connection (single-node clients); only the flusher uses it
	wake     chan struct{} // starts the flusher's turn; sent and closed under mu
	finished chan struct{} // closed when the flusher has ended
	mu       sync.Mutex
	queue    []*pendingCmd
	spare    []*pendingCmd       // the other buffer, reused
	acks     map[string][]string // entry ids to XACK, by stream; nobody waits for them
	// released are told, after the round trip that carries their XACK,
	// that an entry is acked (ackThen).
	released []releasedEntry
	flushing bool
	closed   bool
}

type pendingCmd struct {
	cmd    redis.Cmder
	done   chan struct{}
	failed func(error) // set by doAsync: told of a failure instead of done
}

var pendingPool = sync.Pool{New: func() any { return &pendingCmd{done: make(chan struct{}, 1)} }}

// do runs cmd, sharing a round trip with concurrent callers, and returns
// its error. ctx only bounds the wait: once queued, the command is sent.
func (c *combiner) do(ctx context.Context, cmd redis.Cmder) error {
	c.mu.Lock()
	p := c.queueLocked(cmd, nil)
	if p == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	c.startLocked()
	c.mu.Unlock()
	return c.wait(ctx, p)
}

// queueLocked queues cmd for the next round trip, or returns nil if the
// combiner is closed; c.mu is held.
func (c *combiner) queueLocked(cmd redis.Cmder, failed func(error)) *pendingCmd {
	if c.closed {
		return nil
	}
	p := pendingPool.Get().(*pendingCmd)
	p.cmd, p.failed = cmd, failed
	c.queue = append(c.queue, p)
	return p
}

func (c *combiner) wait(ctx context.Context, p *pendingCmd) error {
	select {
	case <-p.done:
		err := p.cmd.Err()
		p.cmd = nil
		pendingPool.Put(p)
		return err
	case <-ctx.Done():
		// p is still referenced by the flusher; leave it to the GC.
		return ctx.Err()
	}
}

// doAsync queues cmd for the next round trip and returns at once; failed
// is called (by the flusher) if cmd fails. It returns ErrClosed if the
// combiner is closed.
func (c *combiner) doAsync(cmd redis.Cmder, failed func(error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.queueLocked(cmd, failed) == nil {
		return ErrClosed
	}
	c.startLocked()
	return nil
}

// startLocked wakes the flusher unless a flush is in progress; c.mu is
// held.
func (c *combiner) startLocked() {
	if !c.flushing {
		c.flushing = true
		// Never blocks: the flusher took the last wake before it went idle.
		c.wake <- struct{}{}
	}
}

// doInline runs cmd as do does and, in the same round trip after it, acks
// entry ackID of stream ackTopic (none if ackTopic is ""). It is for a
// caller that may wait for its round trip whatever its context: a
// replica's worker writing a reply, which it would write again anyway.
// When no flush is in progress, the caller flushes itself instead of
// waking the flusher and being woken back: two goroutine hand-offs less on
// the way from function to caller. Commands queued meanwhile go on with
// the flusher.
func (c *combiner) doInline(ctx context.Context, cmd redis.Cmder, ackTopic, ackID string) error {
	c.mu.Lock()
	p := c.queueLocked(cmd, nil)
	if p == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	if ackTopic != "" {
		c.queueAckLocked(ackTopic, ackID)
	}
	if c.flushing {
		c.mu.Unlock()
		return c.wait(ctx, p)
	}
	c.flushing = true
	c.flushOnce() // releases c.mu; p.done is signalled
	<-p.done
	err := cmd.Err()
	p.cmd = nil
	pendingPool.Put(p)
	c.mu.Lock()
	switch {
	case !c.pendingLocked():
		c.idleLocked()
		c.mu.Unlock()
	case !c.closed:
		c.wake <- struct{}{} // flushing stays true: the flusher takes over
		c.mu.Unlock()
	default:
		// Closed meanwhile: no flusher to hand over to.
		c.mu.Unlock()
		c.flushAll()
	}
	return err
}

// ack queues an XACK of entry id of the request stream topic and returns
// at once: it goes out with the next round trip, shared with the replies
// written at the same time, with no goroutine hand-off of its own. An ack
// lost (the bus closed, Redis unreachable) leaves the entry pending, so it
// is delivered again: at-least-once.
func (c *combiner) ack(topic, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.queueAckLocked(topic, id)
	c.startLocked()
}

// releaser is told that an entry it held is acked in Redis, or that its
// ack was given up.
type releaser interface{ release(id string) }

type releasedEntry struct {
	r  releaser
	id string
}

// ackThen is ack, and then r.release(id) once the round trip carrying the
// XACK is over (or at once if the combiner is closed): a replica frees a
// request's slot only when the request is no longer pending, so that what
// it holds unacked, and could run again after a crash, stays within its
// Concurrency.
func (c *combiner) ackThen(topic, id string, r releaser) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		r.release(id)
		return
	}
	c.queueAckLocked(topic, id)
	c.released = append(c.released, releasedEntry{r, id})
	c.startLocked()
	c.mu.Unlock()
}

func (c *combiner) queueAckLocked(topic, id string) {
	if c.acks == nil {
		c.acks = map[string][]string{}
	}
	c.acks[topic] = append(c.acks[topic], id)
}

// pendingLocked reports whether a command or an ack waits for a round
// trip; c.mu is held.
func (c *combiner) pendingLocked() bool {
	if len(c.queue) > 0 {
		return true
	}
	for _, ids := range c.acks {
		if len(ids) > 0 {
			return true
		}
	}
	return false
}

// flushOnce sends what is queued; c.mu is held on entry and released.
func (c *combiner) flushOnce() {
	batch := c.queue
	c.queue, c.spare = c.spare[:0], nil
	var acks []redis.Cmder
	for topic, ids := range c.acks {
		args := make([]any, 0, 3+len(ids))
		args = append(args, "xack", topic, Group)
		for _, id := range ids {
			args = append(args, id)
		}
		acks = append(acks, redis.NewIntCmd(context.Background(), args...))
		c.acks[topic] = ids[:0]
		if cap(ids) > 4096 {
			delete(c.acks, topic) // do not keep a burst's buffer
		}
	}
	released := c.released
	c.released = nil
	c.mu.Unlock()
	// No deadline of its own: the client's read and write timeouts bound
	// the round trip.
	c.exec(context.Background(), batch, acks)
	for _, e := range released {
		e.r.release(e.id)
	}
	for i, p := range batch {
		batch[i] = nil
		if p.failed == nil {
			p.done <- struct{}{}
			continue
		}
		if err := p.cmd.Err(); err != nil {
			p.failed(err)
		}
		p.cmd, p.failed = nil, nil
		pendingPool.Put(p)
	}
	c.mu.Lock()
	if c.spare == nil {
		c.spare = batch[:0]
	}
	c.mu.Unlock()
}

// newCombiner starts the combiner's flusher: one goroutine for its life,
// not one per flush, which would grow its stack again through go-redis's
// pipeline code on every flush.
func newCombiner(rdb redis.UniversalClient) *combiner {
	c := &combiner{rdb: rdb, wake: make(chan struct{}, 1), finished: make(chan struct{})}
	go func() {
		defer close(c.finished)
		for range c.wake {
			c.flushAll()
		}
	}()
	return c
}

func (c *combiner) flushAll() {
	c.mu.Lock()
	for c.pendingLocked() {
		c.flushOnce()
		c.mu.Lock()
	}
	c.idleLocked()
	c.mu.Unlock()
}

// exec sends a batch, and then acks, in one round trip. On a single-node
// client it uses a connection of its own: the pool's health check, a
// syscall on every checkout, is paid once instead of once per batch. Only
// one flusher runs at a time, so one connection is enough.
func (c *combiner) exec(ctx context.Context, batch []*pendingCmd, acks []redis.Cmder) {
	var p redis.Pipeliner
	if rc, ok := c.rdb.(*redis.Client); ok {
		if c.conn == nil {
			c.conn = rc.Conn()
		}
		p = c.conn.Pipeline()
	} else {
		// A cluster pipeline runs its commands node by node, in no order
		// across nodes: the acks go after the replies they follow.
		p = c.rdb.Pipeline()
		for _, pc := range batch {
			p.Process(ctx, pc.cmd)
		}
		if len(batch) > 0 {
			p.Exec(ctx)
		}
		for _, cmd := range acks {
			p.Process(ctx, cmd)
		}
		p.Exec(ctx)
		return
	}
	for _, pc := range batch {
		p.Process(ctx, pc.cmd)
	}
	for _, cmd := range acks {
		p.Process(ctx, cmd)
	}
	_, err := p.Exec(ctx)
	if err != nil && c.conn != nil && (!isRedisError(err) || lostMaster(err)) {
		// A network error leaves the connection unusable: take another.
		c.conn.Close()
		c.conn = nil
	}
}

// idleLocked ends a flushing turn; c.mu is held. The owned connection is
// touched only by the flusher, or here when no flush runs.
func (c *combiner) idleLocked() {
	c.flushing = false
	if c.closed && c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// close sends what is queued, then releases the owned connection.
func (c *combiner) close() {
	c.mu.Lock()
	c.closed = true
	if !c.flushing {
		c.idleLocked()
	}
	close(c.wake) // the flusher ends after its turn
	c.mu.Unlock()
	<-c.finished
}

// isRedisError reports an error the server answered with (the connection
// is fine), as opposed to a network error.
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) || errors.Is(err, redis.Nil)
}
