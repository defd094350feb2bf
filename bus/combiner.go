package bus

import (
	"context"
	"errors"
	"sync"
	"time"

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
type combiner struct {
	rdb      redis.UniversalClient
	conn     *redis.Conn   // owned connection (single-node clients); only the flusher uses it
	wake     chan struct{} // starts the flusher's turn; sent and closed under mu
	finished chan struct{} // closed when the flusher has ended
	mu       sync.Mutex
	queue    []*pendingCmd
	spare    []*pendingCmd // the other buffer, reused
	// acks are entry ids to XACK, by stream, sent in one XACK per stream
	// with the next round trip; nobody waits for them. Without other
	// commands to ride along with, they go after ackDelay (ackTimer sets
	// ackDue).
	acks     map[string][]string
	ackTimer *time.Timer
	ackArmed bool
	ackDue   bool
	flushing bool
	closed   bool
}

// ackDelay is how long an ack may wait for a round trip to share. A
// replica under load writes replies far more often, so its acks cost no
// round trip of their own (measured: one round trip per call less); the
// price is that a replica killed within ackDelay of a reply leaves that
// request pending, to be run again (at-least-once, as any kill between
// reply and ack).
const ackDelay = 2 * time.Millisecond

type pendingCmd struct {
	cmd  redis.Cmder
	done chan struct{}
}

var pendingPool = sync.Pool{New: func() any { return &pendingCmd{done: make(chan struct{}, 1)} }}

// do runs cmd, sharing a round trip with concurrent callers, and returns
// its error. ctx only bounds the wait: once queued, the command is sent.
func (c *combiner) do(ctx context.Context, cmd redis.Cmder) error {
	p := pendingPool.Get().(*pendingCmd)
	p.cmd = cmd
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, p)
	if !c.flushing {
		c.flushing = true
		// Never blocks: the flusher took the last wake before it went idle.
		c.wake <- struct{}{} // our own command goes in its first round
	}
	c.mu.Unlock()
	select {
	case <-p.done:
		p.cmd = nil
		pendingPool.Put(p)
		return cmd.Err()
	case <-ctx.Done():
		// p is still referenced by the flusher; leave it to the GC.
		return ctx.Err()
	}
}

// ack queues an XACK of entry id of the request stream topic for the next
// round trip and returns at once: an ack shares its round trip with the
// replies written at the same time, without a goroutine hand-off of its
// own. An ack lost (the bus closed, Redis unreachable) leaves the entry
// pending, so it is delivered again: at-least-once.
func (c *combiner) ack(topic, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.acks == nil {
		c.acks = map[string][]string{}
	}
	c.acks[topic] = append(c.acks[topic], id)
	if !c.flushing {
		c.armAckTimerLocked()
	}
}

// armAckTimerLocked makes sure queued acks go out within ackDelay; c.mu is
// held.
func (c *combiner) armAckTimerLocked() {
	if c.ackArmed || c.closed {
		return
	}
	c.ackArmed = true
	if c.ackTimer == nil {
		c.ackTimer = time.AfterFunc(ackDelay, c.ackTimeout)
	} else {
		c.ackTimer.Reset(ackDelay)
	}
}

// ackTimeout sends the queued acks: nothing else went out within ackDelay.
func (c *combiner) ackTimeout() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ackArmed = false
	if c.closed || !c.acksQueued() {
		return
	}
	c.ackDue = true
	if !c.flushing {
		c.flushing = true
		c.wake <- struct{}{}
	}
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
	c.mu.Unlock()
	// No deadline of its own: the client's read and write timeouts bound
	// the round trip.
	c.exec(context.Background(), batch, acks)
	for i, p := range batch {
		p.done <- struct{}{}
		batch[i] = nil
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
	for len(c.queue) > 0 || c.ackDue {
		c.ackDue = false
		c.flushOnce()
		c.mu.Lock()
	}
	if c.acksQueued() {
		c.armAckTimerLocked() // acked while the last round trip was out
	}
	c.idleLocked()
	c.mu.Unlock()
}

// acksQueued reports whether an ack waits for a round trip; c.mu is held.
func (c *combiner) acksQueued() bool {
	for _, ids := range c.acks {
		if len(ids) > 0 {
			return true
		}
	}
	return false
}

// exec sends a batch, and then acks, in one round trip. On a single-node client it uses a
// connection of its own: the pool's health check, a syscall on every
// checkout, is paid once instead of once per batch. Only one flusher runs
// at a time, so one connection is enough.
func (c *combiner) exec(ctx context.Context, batch []*pendingCmd, acks []redis.Cmder) {
	var p redis.Pipeliner
	if rc, ok := c.rdb.(*redis.Client); ok {
		if c.conn == nil {
			c.conn = rc.Conn()
		}
		p = c.conn.Pipeline()
	} else {
		p = c.rdb.Pipeline()
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
	if c.ackTimer != nil {
		c.ackTimer.Stop()
	}
	if c.acksQueued() {
		c.ackDue = true
		if !c.flushing {
			c.flushing = true
			c.wake <- struct{}{}
		}
	}
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
