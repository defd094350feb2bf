// The read loop of a replica: what it reads from the request stream, and
// how each entry becomes a delivered message.

package bus

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// readLoop is a replica's read loop: it reads entries of the request
// stream with XREADGROUP, as many as there are free slots, and hands each
// to the output channel; nacked and claimed entries come back to it on
// again. On a slow link a second loop reads ahead (readAhead). Together
// they are the only senders on out, and close out and watch when they
// end.
func (g *groupSubscription) readLoop(ctx context.Context) {
	defer g.s.wg.Done()
	defer close(g.watch)
	defer g.closeOutput()
	ahead := make(chan struct{})
	go func() {
		defer close(ahead)
		g.readAhead(ctx)
	}()
	defer func() { <-ahead }()
	// Own pending entries first: a replica restarted under the same name
	// finishes what it had taken.
	history := true
	var backoff readBackoff
	for ctx.Err() == nil {
		if !g.deliverAgain(ctx) {
			return
		}
		slow := !history && g.s.r.comb.rtt.get() >= readAheadRTT
		free := g.readable(slow)
		if free <= 0 {
			select {
			case <-g.freed:
			case d := <-g.again:
				if !g.send(ctx, d) {
					return
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		start, block := ">", g.s.r.cfg.BlockTime
		if history {
			start, block = "0", -1
		}
		g.reserve(free)
		msgs, err := g.reader.readGroup(ctx, g.s.cfg.Consumer, g.topic, start, int64(free), block)
		g.reserve(-free)
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			g.reader.failed(err)
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				// The stream was deleted or Redis restarted empty.
				g.s.r.ensureGroup(ctx, g.topic)
			}
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		var counts map[string]int
		if history && len(msgs) > 0 {
			counts = g.deliveryCounts(ctx, entryIDs(msgs))
		}
		for _, x := range msgs {
			if x.Gone { // pending entry trimmed away
				g.s.r.comb.ack(g.topic, x.ID)
				continue
			}
			count := 1
			if history {
				count = max(counts[x.ID], 1)
			}
			if !g.take(x.ID, count) {
				continue
			}
			if !g.send(ctx, delivery{x, count}) {
				return
			}
		}
		if history && len(msgs) < free {
			history = false
			close(g.historyRead)
		}
		if len(msgs) > 0 && len(msgs) <= yieldBatch {
			// Let the workers just handed entries run before this loop
			// blocks in its next read: a woken receiver otherwise waits
			// for the sender to block (measured: sequential p50 236us ->
			// 208us, the same as the bare Redis loop). Under load, when
			// reads return batches, the workers run on other threads
			// anyway and the yield costs more than it saves.
			runtime.Gosched()
		}
	}
}

// readAheadRTT is the round trip to Redis above which a second read loop
// reads ahead: while the first loop's reply travels back and its next
// read travels out, entries that arrive are read by the second, not left
// waiting a round trip. On a fast link one loop suffices, and a second
// would only split its batches.
const readAheadRTT = 200 * time.Microsecond

// readAheadCheck is how often an idle read-ahead loop looks at the
// link's round trip again.
const readAheadCheck = 100 * time.Millisecond

// readAhead is the second read loop, on a connection of its own: it reads
// new entries (never the consumer's own pending ones, nor entries handed
// back or claimed, which are readLoop's) while the link's round trip is
// above readAheadRTT. Slots are shared with readLoop: each read reserves
// as many as it may return.
func (g *groupSubscription) readAhead(ctx context.Context) {
	select {
	case <-g.historyRead:
	case <-ctx.Done():
		return
	}
	var backoff readBackoff
	check := time.NewTimer(readAheadCheck)
	defer check.Stop()
	for ctx.Err() == nil {
		if g.s.r.comb.rtt.get() < readAheadRTT {
			check.Reset(readAheadCheck)
			select {
			case <-check.C:
			case <-ctx.Done():
				return
			}
			continue
		}
		free := g.readable(true)
		if free <= 0 {
			select {
			case <-g.freedAhead:
			case <-ctx.Done():
				return
			}
			continue
		}
		g.reserve(free)
		msgs, err := g.ahead.readGroup(ctx, g.s.cfg.Consumer, g.topic, ">", int64(free), g.s.r.cfg.BlockTime)
		g.reserve(-free)
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			g.ahead.failed(err)
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		for _, x := range msgs {
			if x.Gone {
				continue // only own pending entries can be gone
			}
			if !g.take(x.ID, 1) {
				continue
			}
			if !g.send(ctx, delivery{x, 1}) {
				return
			}
		}
	}
}

// deliverAgain sends every nacked or claimed entry that is waiting.
func (g *groupSubscription) deliverAgain(ctx context.Context) bool {
	for {
		select {
		case d := <-g.again:
			if !g.send(ctx, d) {
				return false
			}
		default:
			return true
		}
	}
}

// send hands one wire.Entry, which already holds a slot, to the output channel
// and arranges its ack.
func (g *groupSubscription) send(ctx context.Context, d delivery) bool {
	if g.requests != nil {
		return g.sendRequest(ctx, d)
	}
	m := messageOf(d.x)
	md := Delivery{EntryID: d.x.ID, Count: d.count, topic: g.topic}
	direct := g.s.cfg.SettleDirect
	if direct {
		md.settle = func(ok, sent bool) {
			if sent {
				g.release(d.x.ID)
				return
			}
			g.settled(ctx, d, ok, true)
		}
	}
	// The message's context outlives the subscription: a closing replica
	// lets running requests finish.
	m.SetContext(withDetachedDelivery(ctx, md))
	select {
	case g.out <- m:
	case <-ctx.Done():
		g.handBack(d.x.ID, d.count)
		return false
	}
	if !direct {
		g.watch <- watched{m, d}
	}
	return true
}

// sendRequest is send for a subscription of requests: the entry is
// decoded straight into the DeliveredRequest, with no message, and its
// Ack or Nack settles it.
func (g *groupSubscription) sendRequest(ctx context.Context, d delivery) bool {
	r := &DeliveredRequest{by: g, x: d.x, Delivery: Delivery{EntryID: d.x.ID, Count: d.count, topic: g.topic}}
	r.DecodeErr = decodeRequestEntry(d.x, &r.Request)
	select {
	case g.requests <- r:
		return true
	case <-ctx.Done():
		g.handBack(d.x.ID, d.count)
		return false
	}
}

func (g *groupSubscription) closeOutput() {
	if g.requests != nil {
		close(g.requests)
	} else {
		close(g.out)
	}
}
