// The claim loop of a replica: it takes over entries that other replicas
// left idle (XAUTOCLAIM) and removes group members long gone.

package bus

import (
	"context"
	"strings"
	"time"
)

// claimLoop takes over entries other replicas left idle for ClaimIdle:
// once at start (a new replica picks up what a dead one left) and then
// every ClaimInterval. It also removes consumers long gone.
func (g *groupSubscription) claimLoop(ctx context.Context) {
	defer g.s.wg.Done()
	cfg := g.s.r.cfg
	cursor := "0-0"
	select {
	case <-g.historyRead:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(cfg.ClaimInterval)
	defer t.Stop()
	lastJanitor := time.Now()
	for {
		cursor = g.claim(ctx, cursor)
		if time.Since(lastJanitor) > cfg.ConsumerExpiry/4 {
			g.removeGoneConsumers(ctx)
			lastJanitor = time.Now()
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (g *groupSubscription) claim(ctx context.Context, cursor string) string {
	free := g.s.cfg.Concurrency - g.busy()
	if free <= 0 {
		return cursor
	}
	msgs, next, err := g.claimer.autoClaim(ctx, g.s.cfg.Consumer, g.topic, g.s.r.cfg.ClaimIdle, cursor, int64(free))
	if err != nil {
		g.claimer.failed(err)
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			g.s.r.ensureGroup(ctx, g.topic)
		}
		return "0-0"
	}
	if len(msgs) == 0 {
		return next
	}
	ids := make([]string, len(msgs))
	for i, x := range msgs {
		ids[i] = x.ID
	}
	counts := g.deliveryCounts(ctx, ids)
	queued := false
	for _, x := range msgs {
		if x.Gone {
			g.s.r.comb.ack(g.topic, x.ID)
			continue
		}
		count := max(counts[x.ID], 1)
		if !g.take(x.ID, count) {
			continue
		}
		g.again <- delivery{x, count} // never blocks: it holds a slot
		queued = true
	}
	if queued {
		g.reader.unblock() // the read loop delivers them now, not after its block
	}
	return next
}

// removeGoneConsumers deletes group members with nothing pending that
// have not read for ConsumerExpiry: replicas that stopped for good. A
// live replica reappears with its next read.
func (g *groupSubscription) removeGoneConsumers(ctx context.Context) {
	cs, err := g.s.r.rdb.XInfoConsumers(ctx, g.topic, Group).Result()
	if err != nil {
		return
	}
	for _, c := range cs {
		if c.Pending == 0 && c.Idle > g.s.r.cfg.ConsumerExpiry && c.Name != g.s.cfg.Consumer {
			g.s.r.rdb.XGroupDelConsumer(ctx, g.topic, Group, c.Name)
		}
	}
}
