package bus

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/fnmesh/fnmesh/internal/wire"
	"github.com/redis/go-redis/v9"
)

// combiner sends commands from many goroutines in shared writes, and
// keeps writing while replies are outstanding. The first caller to find
// no flush in progress starts a flusher: it writes that command together
// with every command queued meanwhile, as one batch, and goes on while
// commands keep queuing; it does not wait for a batch's replies before it
// writes the next. The connection's reader reads the replies in the
// order the batches went out and tells their callers (pipeline). Under
// load commands queue while a batch is being written and go out together
// in the next. Every caller, the one that started the flusher included,
// waits only as long as its ctx allows: when Redis stops answering, a
// round trip can take dial timeouts and a retry, and a call must still
// end at its deadline. Some callers do not wait at all: doAsync (a
// call's request, whose reply proves it was stored) and doSettled (a
// reply, which settles its request once written).
//
// Acks (XACK) queue apart, by stream, and go out as one XACK per stream
// after the commands of the same batch: an ack queued with a reply
// (doInline, doSettled) goes out with it.
type combiner struct {
	rdb    redis.UniversalClient
	dialer *wire.Dialer  // nil: through go-redis (a cluster)
	wire   *pipeline     // the connection of a single-node client; only the flusher writes it
	wake   chan struct{} // starts the flusher's turn; sent and closed under mu
	// gateTimer is the flusher's, for gate.
	gateTimer *time.Timer
	finished  chan struct{} // closed when the flusher has ended
	mu        sync.Mutex
	queue     []*pendingCmd
	retry     []*batch            // batches to write once more, on a new connection
	acks      map[string][]string // entry ids to XACK, by stream; nobody waits for them
	// released are told, after the round trip that carries their XACK,
	// that an entry is acked (ackThen).
	released []releasedEntry
	flushing bool
	closed   bool

	deadMaxLen int64 // MAXLEN of the dead letters of replies that cannot be written

	clusterQueue chan *batch // a cluster's batches, to its workers
	workers      sync.WaitGroup
}

// pendingCmd is a command on its way: made by command, given to do,
// doAsync, doInline or doSettled, which own it from then on.
type pendingCmd struct {
	cmd    wire.Cmd
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
	p.cmd.Reset()
	return p
}

func (p *pendingCmd) release() {
	p.err, p.failed, p.settles, p.delivery, p.request, p.replica, p.then = nil, nil, nil, Delivery{}, false, "", nil
	p.cmd.Shrink(64 << 10)
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
// is called (once its reply is read) if p fails. It returns ErrClosed if the
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
// told p's outcome after the round trip (on the goroutine that reads the
// replies, so it must not wait for another round trip).
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
// When no flush is in progress, the caller writes itself instead of
// waking the flusher: a goroutine hand-off less on the way from function
// to caller. Commands queued meanwhile go on with the flusher.
func (c *combiner) doInline(ctx context.Context, p *pendingCmd, ackTopic, ackID string) error {
	flushed, err := c.queueOrFlush(p, ackTopic, ackID)
	switch {
	case err != nil:
		return err
	case !flushed:
		return c.wait(ctx, p)
	}
	<-p.done // signalled once its reply is read
	err = p.err
	p.release()
	return err
}

// doSettled queues p, a reply to request m, and, in the same round trip
// after it, the XACK of m (entry d.EntryID of stream d.topic), and
// returns without waiting for them: m is settled by p's outcome after the
// round trip (replyWritten, on the goroutine that read its reply). When no
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
	if c.wire != nil && c.wire.inFlight.Load() > 0 {
		// Replies are outstanding: the flusher holds the write a moment
		// (gate), so that it carries more.
		c.startLocked()
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
		pl := c.idleLocked()
		c.mu.Unlock()
		pl.shutdown()
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
	if len(c.queue) > 0 || len(c.retry) > 0 {
		return true
	}
	for _, ids := range c.acks {
		if len(ids) > 0 {
			return true
		}
	}
	return false
}

// batch is what one write sends: commands, then one XACK per stream, and
// the releasers told once the XACKs are through. Batches are reused.
type batch struct {
	cmds     []*pendingCmd
	acks     []wire.Cmd
	released []releasedEntry
	err      error // the write failed: every command fails with it
	// afterIdle: written when nothing else was in flight on a connection
	// that had answered before, so a failure may mean the connection died
	// while idle (retried once).
	afterIdle bool
	retried   bool
}

var batchPool = sync.Pool{New: func() any { return new(batch) }}

// maxInFlight bounds the batches written on the combiner's connection
// whose replies are not read yet: past it, the writer waits for replies
// (and commands queue, as they do while a write is going out).
const maxInFlight = 32

// flushWait is the longest the flusher holds a write while replies are
// outstanding (see gate): well under a network round trip, about one on
// loopback.
const flushWait = 100 * time.Microsecond

// clusterWorkers is how many batches go through go-redis at once on a
// cluster.
const clusterWorkers = 4

// flushOnce sends what is queued, or a batch to retry; c.mu is held on
// entry and released.
func (c *combiner) flushOnce() {
	if n := len(c.retry); n > 0 {
		b := c.retry[0]
		copy(c.retry, c.retry[1:])
		c.retry[n-1] = nil
		c.retry = c.retry[:n-1]
		c.mu.Unlock()
		c.send(b)
		return
	}
	b := batchPool.Get().(*batch)
	b.cmds, c.queue = c.queue, b.cmds[:0]
	acks := b.acks[:0]
	for topic, ids := range c.acks {
		if len(ids) == 0 {
			continue
		}
		if len(acks) == cap(acks) {
			acks = append(acks, wire.Cmd{})
		} else {
			acks = acks[:len(acks)+1]
		}
		a := &acks[len(acks)-1]
		a.Reset()
		a.Arg("xack")
		a.Arg(topic)
		a.Arg(Group)
		for _, id := range ids {
			a.Arg(id)
		}
		c.acks[topic] = ids[:0]
		if cap(ids) > 4096 {
			delete(c.acks, topic) // do not keep a burst's buffer
		}
	}
	b.acks = acks
	b.released, c.released = c.released, b.released[:0]
	c.mu.Unlock()
	c.send(b)
}

// complete tells everyone waiting on b its outcome and recycles b. It
// runs once b's replies are read (on the connection's reader, or a
// cluster worker), so it must not wait for another round trip.
func (c *combiner) complete(b *batch) {
	for i, e := range b.released {
		e.r.release(e.id)
		b.released[i] = releasedEntry{}
	}
	for i, p := range b.cmds {
		b.cmds[i] = nil
		if p.request && errors.Is(p.err, redis.Nil) {
			p.err = notServed(p.cmd.Stream())
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
	b.cmds, b.released = b.cmds[:0], b.released[:0]
	b.err, b.afterIdle, b.retried = nil, false, false
	if cap(b.acks) > 64 {
		b.acks = nil
	}
	batchPool.Put(b)
}

// writeBatch writes the batch's commands and then its acks on w.
func writeBatch(w *wire.Conn, b *batch) error {
	for _, p := range b.cmds {
		w.Queue(p.cmd.Bytes())
	}
	for i := range b.acks {
		w.Queue(b.acks[i].Bytes())
	}
	return w.Flush()
}

// readBatch reads a reply on w for each of the batch's commands and
// acks: a command's server error goes to its pendingCmd; a failure of
// the connection is returned (and given to every command whose reply was
// not read).
func readBatch(w *wire.Conn, b *batch) error {
	for i, p := range b.cmds {
		replyErr, err := w.ReadReplyErr()
		if err != nil {
			for _, q := range b.cmds[i:] {
				q.err = err
			}
			return err
		}
		p.err = replyErr
	}
	for range b.acks {
		// An ack's failure (NOGROUP: the stream was deleted) leaves its
		// entry pending, which is all an ack can do.
		if _, err := w.ReadReplyErr(); err != nil {
			return err
		}
	}
	return nil
}

func (b *batch) fail(err error) {
	for _, p := range b.cmds {
		p.err = err
	}
}

// newCombiner starts the combiner's flusher: one goroutine for its life,
// not one per flush, which would grow its stack again through go-redis's
// pipeline code on every flush. On a cluster, clusterWorkers goroutines
// run batches at once, each on connections of its own to the masters
// (combiner_cluster.go); on another client passed in, through go-redis.
func newCombiner(rdb redis.UniversalClient, dialer *wire.Dialer, deadMaxLen int64) *combiner {
	c := &combiner{rdb: rdb, dialer: dialer, deadMaxLen: deadMaxLen, wake: make(chan struct{}, 1), finished: make(chan struct{})}
	go func() {
		defer close(c.finished)
		for range c.wake {
			c.flushAll()
		}
	}()
	if dialer == nil {
		c.clusterQueue = make(chan *batch, clusterWorkers)
		for range clusterWorkers {
			c.workers.Add(1)
			go func() {
				defer c.workers.Done()
				var own *clusterWire
				if cc, ok := rdb.(*redis.ClusterClient); ok {
					own = &clusterWire{cc: cc}
					defer own.close()
				}
				for b := range c.clusterQueue {
					if own != nil {
						own.exec(context.Background(), b)
					} else {
						c.execRedis(context.Background(), b)
					}
					c.complete(b)
				}
			}()
		}
	}
	return c
}

func (c *combiner) flushAll() {
	c.mu.Lock()
	for c.pendingLocked() {
		c.mu.Unlock()
		c.gate() // what is pending stays: only the flusher takes it
		c.mu.Lock()
		c.flushOnce()
		c.mu.Lock()
	}
	pl := c.idleLocked()
	c.mu.Unlock()
	pl.shutdown()
}

// pipeline is the combiner's connection to a single server: the writer
// (whoever flushes) writes each batch as soon as it is ready and hands it
// to the connection's reader, which reads the replies in the order the
// batches went out and completes them. Writes go on while replies are
// outstanding, up to maxInFlight batches.
type pipeline struct {
	w    *wire.Conn
	sent chan *batch   // written, replies not read yet; closed by the writer when it leaves the connection
	done chan struct{} // closed when the reader has ended (and closed the connection)
	// broken: the connection failed, or its server is no longer the
	// master; the writer writes no more on it.
	broken   atomic.Bool
	inFlight atomic.Int32
	answered atomic.Bool // a batch was answered on it
	// progress is signalled (without blocking) when a batch is
	// completed, for the gate.
	progress  chan struct{}
	lastWrite time.Time // of the last batch; the writer's
}

// send writes b: on a wire.Conn of its own for a single
// server, through go-redis for a cluster. Only one flusher runs at a
// time, so only one goroutine writes.
func (c *combiner) send(b *batch) {
	if c.dialer == nil {
		c.clusterQueue <- b
		return
	}
	pl := c.wire
	if pl != nil && pl.broken.Load() {
		c.leaveWire()
		pl = nil
	}
	if pl == nil {
		// No deadline of its own: the dialer's timeout bounds it.
		w, err := c.dialer.Dial(context.Background())
		if err != nil {
			b.fail(err)
			c.complete(b)
			return
		}
		pl = &pipeline{w: w, sent: make(chan *batch, maxInFlight), done: make(chan struct{}), progress: make(chan struct{}, 1)}
		go c.read(pl)
		c.wire = pl
	}
	b.afterIdle = pl.inFlight.Add(1) == 1 && pl.answered.Load()
	select {
	case <-pl.progress: // the gate waits for an answer after this write
	default:
	}
	pl.lastWrite = time.Now()
	if err := writeBatch(pl.w, b); err != nil {
		b.err = err
		pl.broken.Store(true)
		pl.w.Close() // the reader's read fails at once
	}
	pl.sent <- b
	if pl.broken.Load() {
		c.leaveWire()
	}
}

// gate holds the next write, while replies are outstanding, until a
// batch is answered or flushWait has passed since the last write: on a
// fast link the replies come first and the next batch carries what
// queued meanwhile (fewer writes, less CPU for us and Redis); on a slow
// one writes go on every flushWait without waiting a round trip.
func (c *combiner) gate() {
	pl := c.wire
	if pl == nil || pl.inFlight.Load() == 0 {
		return
	}
	wait := flushWait - time.Since(pl.lastWrite)
	if wait <= 0 {
		return
	}
	if c.gateTimer == nil {
		c.gateTimer = time.NewTimer(wait)
	} else {
		c.gateTimer.Reset(wait)
	}
	select {
	case <-pl.progress:
	case <-c.gateTimer.C:
	}
	c.gateTimer.Stop()
}

// leaveWire stops writing on the connection: its reader reads what is in
// flight, then closes it.
func (c *combiner) leaveWire() {
	close(c.wire.sent)
	c.wire = nil
}

// shutdown leaves the connection and waits until every batch in flight
// on it is completed; nil does nothing.
func (pl *pipeline) shutdown() {
	if pl == nil {
		return
	}
	close(pl.sent)
	<-pl.done
}

// read is the reader of pl: it reads each batch's replies in the order
// the batches were written. When the connection fails, every batch in
// flight on it fails with the error, or, if it died while idle (the
// first failed batch was written after idling, and this is no timeout),
// is retried once on a new connection: a command that did reach Redis is
// then sent twice, which at-least-once delivery already allows (a
// reply's caller takes the first, a request runs twice).
func (c *combiner) read(pl *pipeline) {
	defer close(pl.done)
	defer pl.w.Close()
	var failed error
	retry := false
	for b := range pl.sent {
		if failed != nil {
			// Written on a connection already failed.
			b.fail(failed)
		} else if err := c.readBatch(pl, b); err != nil {
			failed = err
			pl.broken.Store(true)
			pl.w.Close()
			var ne net.Error
			// A timeout is a server that does not answer, not a
			// connection that died while idle: fail now, do not wait
			// for it once more.
			retry = b.afterIdle && !(errors.As(err, &ne) && ne.Timeout())
		}
		pl.inFlight.Add(-1)
		select {
		case pl.progress <- struct{}{}:
		default:
		}
		if failed != nil && retry && !b.retried && c.requeue(b) {
			continue
		}
		c.complete(b)
	}
}

// readBatch reads b's replies on pl; on a failure, the commands whose
// replies were read keep their outcome, the others get the error.
func (c *combiner) readBatch(pl *pipeline, b *batch) error {
	if b.err != nil {
		b.fail(b.err)
		return b.err
	}
	if err := readBatch(pl.w, b); err != nil {
		return err
	}
	pl.answered.Store(true)
	for _, p := range b.cmds {
		if p.err != nil && lostMaster(p.err) {
			// Sentinel moved the master: the next batch dials the
			// new one.
			pl.broken.Store(true)
			break
		}
	}
	return nil
}

// requeue queues b to be written once more, on a new connection, unless
// the combiner is closed.
func (c *combiner) requeue(b *batch) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	b.retried, b.err = true, nil
	c.retry = append(c.retry, b)
	c.startLocked()
	return true
}

// execRedis runs b through go-redis. A cluster pipeline runs its commands
// node by node, in no order across nodes: the acks go after the replies
// they follow, in a round trip of their own.
func (c *combiner) execRedis(ctx context.Context, b *batch) {
	p := c.rdb.Pipeline()
	if len(b.cmds) > 0 {
		cmds := make([]*redis.Cmd, len(b.cmds))
		for i, pc := range b.cmds {
			cmds[i] = redis.NewCmd(ctx, pc.cmd.Args()...)
			p.Process(ctx, cmds[i])
		}
		p.Exec(ctx)
		for i, pc := range b.cmds {
			pc.err = cmds[i].Err()
		}
	}
	if len(b.acks) > 0 {
		for i := range b.acks {
			p.Process(ctx, redis.NewCmd(ctx, b.acks[i].Args()...))
		}
		p.Exec(ctx)
	}
}

// idleLocked ends a flushing turn; c.mu is held. Once the combiner is
// closed it returns the connection to shut down (after c.mu is released:
// its reader completes batches, which takes c.mu). The connection is
// written only by the flusher, or here when no flush runs.
func (c *combiner) idleLocked() *pipeline {
	c.flushing = false
	if c.closed && c.wire != nil {
		pl := c.wire
		c.wire = nil
		return pl
	}
	return nil
}

// close sends what is queued, then waits for the replies in flight and
// releases the owned connection.
func (c *combiner) close() {
	c.mu.Lock()
	c.closed = true
	var pl *pipeline
	if !c.flushing {
		pl = c.idleLocked()
	}
	close(c.wake) // the flusher ends after its turn
	c.mu.Unlock()
	pl.shutdown()
	<-c.finished
	if c.clusterQueue != nil {
		close(c.clusterQueue)
		c.workers.Wait()
	}
}

// isRedisError reports an error the server answered with (the connection
// is fine), as opposed to a network error.
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) || errors.Is(err, redis.Nil)
}

// newWireDialer returns how the combiner of r dials, or nil if it must go
// through go-redis: a cluster (its commands go to the node of their key),
// a client passed in whose options cannot make another (a Sentinel
// client, an unknown kind), or one whose set-up a wire.Dialer cannot repeat.
func (r *Redis) newWireDialer() *wire.Dialer {
	c, ok := r.rdb.(*redis.Client)
	switch {
	case !ok:
		return nil
	case r.failover != nil:
		fo := *r.failover
		boundTimeouts(&fo.DialTimeout, &fo.ReadTimeout, &fo.WriteTimeout)
		return r.sentinels.NewFailoverDialer(fo)
	case c.Options().Addr == "FailoverClient":
		return nil
	}
	opt := *c.Options()
	boundTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
	return wire.NewDialer(opt)
}

// combinerTimeout bounds the combiner's dial and each of its round trips
// (below a client's own, longer, timeouts): when Redis hangs or is gone,
// calls and sends fail with unavailable within about a second, so callers
// can back off, instead of waiting out their deadline.
const combinerTimeout = time.Second

// boundTimeouts makes each timeout no longer than combinerTimeout; a
// negative one (none) is kept.
func boundTimeouts(ds ...*time.Duration) {
	for _, d := range ds {
		if *d == 0 || *d > combinerTimeout {
			*d = combinerTimeout
		}
	}
}
