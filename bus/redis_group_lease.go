// The lease loop of a replica: it keeps the entries this replica runs from
// looking idle, so the claim loops of other replicas leave them alone.

package bus

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// leaseLoop keeps the entries this replica runs from looking idle, so no
// other replica claims a slow but live request: every ClaimIdle/3 it
// claims them to itself again (XCLAIM JUSTID resets the idle time and
// not the delivery count). Entries another replica claimed meanwhile
// (after a stall longer than ClaimIdle) are left to it.
func (g *groupSubscription) leaseLoop(ctx context.Context) {
	defer g.s.wg.Done()
	t := time.NewTicker(g.s.r.cfg.ClaimIdle / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			g.renewLeases(ctx)
		case <-ctx.Done():
			return
		}
	}
}

func (g *groupSubscription) renewLeases(ctx context.Context) {
	g.mu.Lock()
	ids := make([]string, 0, len(g.inflight))
	for id := range g.inflight {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	owned := g.deliveryCounts(ctx, ids) // only entries still ours
	mine := make([]string, 0, len(owned))
	for _, id := range ids {
		if _, ok := owned[id]; ok {
			mine = append(mine, id)
		}
	}
	for len(mine) > 0 {
		n := min(len(mine), 200)
		g.s.r.rdb.XClaimJustID(ctx, &redis.XClaimArgs{
			Stream: g.topic, Group: Group, Consumer: g.s.cfg.Consumer, MinIdle: 0, Messages: mine[:n],
		})
		mine = mine[n:]
	}
}
