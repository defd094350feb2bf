package bus

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// combiner sends commands from many goroutines in shared round trips.
// The first caller to find no flush in progress becomes the flusher: it
// writes its own command together with every command queued meanwhile,
// in one pipeline. So a lone call costs no goroutine hand-off, and under
// load commands queue while a round trip is in flight and go out together
// in the next.
type combiner struct {
	rdb      redis.UniversalClient
	mu       sync.Mutex
	queue    []*pendingCmd
	spare    []*pendingCmd // the other buffer, reused
	flushing bool
}

type pendingCmd struct {
	cmd  redis.Cmder
	done chan struct{}
}

var pendingPool = sync.Pool{New: func() any { return &pendingCmd{done: make(chan struct{}, 1)} }}

// execTimeout bounds one shared pipeline, whatever its callers' contexts.
const execTimeout = 10 * time.Second

// do runs cmd, sharing a round trip with concurrent callers, and returns
// its error. ctx only bounds the wait: once queued, the command is sent.
func (c *combiner) do(ctx context.Context, cmd redis.Cmder) error {
	p := pendingPool.Get().(*pendingCmd)
	p.cmd = cmd
	c.mu.Lock()
	c.queue = append(c.queue, p)
	if c.flushing {
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
	c.flushing = true
	c.flushOnce() // our own command goes in this round
	<-p.done
	p.cmd = nil
	pendingPool.Put(p)
	c.mu.Lock()
	if len(c.queue) > 0 {
		// Others queued while we flushed: hand the flushing on rather
		// than keep this caller waiting.
		c.mu.Unlock()
		go c.flushAll()
		return cmd.Err()
	}
	c.flushing = false
	c.mu.Unlock()
	return cmd.Err()
}

// flushOnce sends what is queued; c.mu is held on entry and released.
func (c *combiner) flushOnce() {
	batch := c.queue
	c.queue, c.spare = c.spare[:0], nil
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	if len(batch) == 1 {
		c.rdb.Process(ctx, batch[0].cmd)
	} else {
		pipe := c.rdb.Pipeline()
		for _, p := range batch {
			pipe.Process(ctx, p.cmd)
		}
		pipe.Exec(ctx)
	}
	cancel()
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

func (c *combiner) flushAll() {
	c.mu.Lock()
	for len(c.queue) > 0 {
		c.flushOnce()
		c.mu.Lock()
	}
	c.flushing = false
	c.mu.Unlock()
}
