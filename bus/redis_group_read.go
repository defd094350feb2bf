// The read loop of a replica: what it reads from the request stream, and
// how each entry becomes a delivered message.

package bus

import (
	"context"
	"errors"
	"runtime"
	"strings"

	"github.com/redis/go-redis/v9"
)

// readLoop is a replica's read loop: it reads entries of the request
// stream with XREADGROUP, as many as there are free slots, and hands each
// to the output channel; nacked and claimed entries come back to it on
// again. It is the only sender on out and closes out and watch when it
// ends.
func (g *groupSubscription) readLoop(ctx context.Context) {
	defer g.s.wg.Done()
	defer close(g.watch)
	defer g.closeOutput()
	conc := g.s.cfg.Concurrency
	// Own pending entries first: a replica restarted under the same name
	// finishes what it had taken.
	history := true
	var backoff readBackoff
	for ctx.Err() == nil {
		if !g.deliverAgain(ctx) {
			return
		}
		free := conc - g.busy()
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
		free = min(free, int(g.s.r.cfg.ReadBatch))
		start, block := ">", g.s.r.cfg.BlockTime
		if history {
			start, block = "0", -1
		}
		msgs, err := g.reader.readGroup(ctx, g.s.cfg.Consumer, g.topic, start, int64(free), block)
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
