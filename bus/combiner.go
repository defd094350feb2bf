package bus

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// combiner sends commands from many goroutines in shared round trips.
// The first caller to find no flush in progress starts a flusher: it
// writes that command together with every command queued meanwhile, in
// one pipeline, and goes on while commands keep queuing. Under load
// commands queue while a round trip is in flight and go out together in
// the next. Every caller, the one that started the flusher included,
// waits only as long as its ctx allows: when Redis stops answering, a
// round trip can take dial timeouts and a retry, and a call must still
// end at its deadline. Some callers do not wait at all: doAsync (a
// call's request, whose reply proves it was stored) and doSettled (a
// reply, which settles its request once written).
//
// Acks (XACK) queue apart, by stream, and go out as one XACK per stream
// after the commands of the same round trip: an ack queued with a reply
// (doInline, doSettled) goes out with it.
type combiner struct {
	rdb      redis.UniversalClient
	dialer   *wireDialer   // nil: through go-redis (a cluster)
	wire     *wireConn     // the connection of a single-node client; only the flusher uses it
	ackCmds  []respCmd     // the flusher's XACKs, reused
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

	deadMaxLen int64 // MAXLEN of the dead letters of replies that cannot be written
}

// pendingCmd is a command on its way: made by command, given to do,
// doAsync, doInline or doSettled, which own it from then on.
type pendingCmd struct {
	cmd    respCmd
	err    error // the command's outcome, set by the round trip
	done   chan struct{}
	failed func(error) // set by doAsync: told of a failure instead of done
	// settles, set by doSettled, is the request a reply answers: settled
	// by the reply's outcome (replyWritten) instead of done.
	settles  *message.Message
	delivery Delivery // of settles
	// request marks a request's XADD NOMKSTREAM: a nil reply (no stream)
	// becomes not_found.
	request bool
	replica string          // of a reply that settles its request: who wrote it
	then    func(err error) // set by doThen: told the outcome instead of done
}

var pendingPool = sync.Pool{New: func() any { return &pendingCmd{done: make(chan struct{}, 1)} }}

// command returns an empty command to fill (p.cmd) and run.
func (c *combiner) command() *pendingCmd {
	p := pendingPool.Get().(*pendingCmd)
	p.cmd.reset()
	return p
}

func (p *pendingCmd) release() {
	p.err, p.failed, p.settles, p.delivery, p.request, p.replica, p.then = nil, nil, nil, Delivery{}, false, "", nil
	if cap(p.cmd.b) > 64<<10 {
		p.cmd.b = nil // do not keep a large payload's buffer
	}
	pendingPool.Put(p)
}

// do runs p, sharing a round trip with concurrent callers, and returns
// its error. ctx only bounds the wait: once queued, the command is sent.
func (c *combiner) do(ctx context.Context, p *pendingCmd) error {
	c.mu.Lock()
	if !c.queueLocked(p, nil) {
		c.mu.Unlock()
		return ErrClosed
	}
	c.startLocked()
	c.mu.Unlock()
	return c.wait(ctx, p)
}

// queueLocked queues p for the next round trip, or returns false (and
// releases p) if the combiner is closed; c.mu is held.
func (c *combiner) queueLocked(p *pendingCmd, failed func(error)) bool {
	if c.closed {
		p.release()
		return false
	}
	p.failed = failed
	c.queue = append(c.queue, p)
	return true
}

func (c *combiner) wait(ctx context.Context, p *pendingCmd) error {
	select {
	case <-p.done:
		err := p.err
		p.release()
		return err
	case <-ctx.Done():
		// p is still referenced by the flusher; leave it to the GC.
		return ctx.Err()
	}
}

// doAsync queues p for the next round trip and returns at once; failed
// is called (by the flusher) if p fails. It returns ErrClosed if the
// combiner is closed.
func (c *combiner) doAsync(p *pendingCmd, failed func(error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.queueLocked(p, failed) {
		return ErrClosed
	}
	c.startLocked()
	return nil
}

// doThen queues p for the next round trip and returns at once; then is
// told p's outcome after the round trip (on the flushing goroutine, so it
// must not wait for another round trip).
func (c *combiner) doThen(p *pendingCmd, then func(error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.queueLocked(p, nil) {
		then(ErrClosed)
		return
	}
	p.then = then
	c.startLocked()
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
func (c *combiner) doInline(ctx context.Context, p *pendingCmd, ackTopic, ackID string) error {
	flushed, err := c.queueOrFlush(p, ackTopic, ackID)
	switch {
	case err != nil:
		return err
	case !flushed:
		return c.wait(ctx, p)
	}
	<-p.done // signalled by the flush
	err = p.err
	p.release()
	return err
}

// doSettled queues p, a reply to request m, and, in the same round trip
// after it, the XACK of m (entry d.EntryID of stream d.topic), and
// returns without waiting for them: m is settled by p's outcome after the
// round trip (replyWritten, on the goroutine that flushed it). When no
// flush is in progress the caller flushes itself, as doInline does.
func (c *combiner) doSettled(p *pendingCmd, m *message.Message, d Delivery) error {
	p.settles, p.delivery = m, d
	_, err := c.queueOrFlush(p, d.topic, d.EntryID)
	return err
}

// queueOrFlush queues p and the XACK of entry ackID of stream ackTopic
// (none if ackTopic is "") and, when no flush is in progress, flushes them
// itself, reporting that it did: what queued meanwhile then goes on with
// the flusher.
func (c *combiner) queueOrFlush(p *pendingCmd, ackTopic, ackID string) (flushed bool, err error) {
	c.mu.Lock()
	if !c.queueLocked(p, nil) {
		c.mu.Unlock()
		return false, ErrClosed
	}
	if ackTopic != "" {
		c.queueAckLocked(ackTopic, ackID)
	}
	if c.flushing {
		c.mu.Unlock()
		return false, nil
	}
	c.flushing = true
	c.flushOnce() // releases c.mu
	c.handOver()
	return true, nil
}

// handOver ends an inline flush: what queued meanwhile goes to the
// flusher. It takes and releases c.mu.
func (c *combiner) handOver() {
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
	acks := c.ackCmds[:0]
	for topic, ids := range c.acks {
		if len(ids) == 0 {
			continue
		}
		if len(acks) == cap(acks) {
			acks = append(acks, respCmd{})
		} else {
			acks = acks[:len(acks)+1]
		}
		a := &acks[len(acks)-1]
		a.reset()
		a.arg("xack")
		a.arg(topic)
		a.arg(Group)
		for _, id := range ids {
			a.arg(id)
		}
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
	c.ackCmds = acks[:0]
	for _, e := range released {
		e.r.release(e.id)
	}
	for i, p := range batch {
		batch[i] = nil
		if p.request && errors.Is(p.err, redis.Nil) {
			p.err = notServed(p.cmd.stream())
		}
		if p.settles != nil {
			c.replyWritten(p)
			p.release()
			continue
		}
		if p.then != nil {
			p.then(p.err)
			p.release()
			continue
		}
		if p.failed == nil {
			p.done <- struct{}{}
			continue
		}
		if p.err != nil {
			p.failed(p.err)
		}
		p.release()
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
func newCombiner(rdb redis.UniversalClient, dialer *wireDialer, deadMaxLen int64) *combiner {
	c := &combiner{rdb: rdb, dialer: dialer, deadMaxLen: deadMaxLen, wake: make(chan struct{}, 1), finished: make(chan struct{})}
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

// exec sends a batch, and then acks, in one round trip: on a connection
// of its own (wire.go) for a single server, through go-redis for a
// cluster. Only one flusher runs at a time, so one connection is enough.
func (c *combiner) exec(ctx context.Context, batch []*pendingCmd, acks []respCmd) {
	if c.dialer == nil {
		c.execRedis(ctx, batch, acks)
		return
	}
	for retried := false; ; retried = true {
		if c.wire == nil {
			w, err := c.dialer.dial(ctx)
			if err != nil {
				for _, p := range batch {
					p.err = err
				}
				return
			}
			c.wire = w
		}
		err := c.wire.roundTrip(batch, acks)
		if err == nil {
			for _, p := range batch {
				if p.err != nil && lostMaster(p.err) {
					// Sentinel moved the master: the next round trip
					// dials the new one.
					c.dropWire()
					break
				}
			}
			return
		}
		stale := c.wire.reused
		c.dropWire()
		var ne net.Error
		if !stale || retried || errors.As(err, &ne) && ne.Timeout() {
			// A timeout is a server that does not answer, not a
			// connection that died while idle: fail now, do not wait
			// for it once more.
			return
		}
		// A connection that sat idle may have died under us (Redis
		// restarted): once more on a new one, as go-redis would retry.
		// A command that did reach Redis is then sent twice, which
		// at-least-once delivery already allows: a reply's caller takes
		// the first, a request runs twice.
	}
}

func (c *combiner) dropWire() {
	c.wire.close()
	c.wire = nil
}

// execRedis is exec through go-redis. A cluster pipeline runs its
// commands node by node, in no order across nodes: the acks go after the
// replies they follow, in a round trip of their own.
func (c *combiner) execRedis(ctx context.Context, batch []*pendingCmd, acks []respCmd) {
	p := c.rdb.Pipeline()
	if len(batch) > 0 {
		cmds := make([]*redis.Cmd, len(batch))
		for i, pc := range batch {
			cmds[i] = redis.NewCmd(ctx, pc.cmd.args()...)
			p.Process(ctx, cmds[i])
		}
		p.Exec(ctx)
		for i, pc := range batch {
			pc.err = cmds[i].Err()
		}
	}
	if len(acks) > 0 {
		for i := range acks {
			p.Process(ctx, redis.NewCmd(ctx, acks[i].args()...))
		}
		p.Exec(ctx)
	}
}

// idleLocked ends a flushing turn; c.mu is held. The owned connection is
// touched only by the flusher, or here when no flush runs.
func (c *combiner) idleLocked() {
	c.flushing = false
	if c.closed && c.wire != nil {
		c.dropWire()
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
