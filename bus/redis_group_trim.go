// The trim loop of a replica: it removes request entries every group has
// acknowledged, when the stream has no MAXLEN of its own.

package bus

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// trimLoop removes entries every consumer group of the stream has
// acknowledged: XTRIM MINID to the oldest entry some group still needs.
func (g *groupSubscription) trimLoop(ctx context.Context) {
	defer g.s.wg.Done()
	t := time.NewTicker(g.s.r.cfg.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			trimAcked(ctx, g.s.r.rdb, g.topic)
		case <-ctx.Done():
			return
		}
	}
}

// trimAcked trims topic up to the oldest entry that some group has not
// acknowledged or not yet read.
func trimAcked(ctx context.Context, rdb redis.UniversalClient, topic string) error {
	groups, err := rdb.XInfoGroups(ctx, topic).Result()
	if err != nil || len(groups) == 0 {
		return err
	}
	var minID string
	for _, gr := range groups {
		keep := gr.LastDeliveredID
		if gr.Pending > 0 {
			p, err := rdb.XPending(ctx, topic, gr.Name).Result()
			if err != nil {
				return err
			}
			keep = p.Lower
		} else {
			// Everything up to and including last-delivered is acked.
			keep = nextID(keep)
		}
		if minID == "" || compareIDs(keep, minID) < 0 {
			minID = keep
		}
	}
	if minID == "" || minID == "0-0" || minID == "0-1" {
		return nil
	}
	// LIMIT 0: without it an approximate trim removes at most 10,000
	// entries (100 macro nodes), fewer than a busy service adds between
	// two trims, and the stream would grow with the number of calls.
	return rdb.Do(ctx, "XTRIM", topic, "MINID", "~", minID, "LIMIT", 0).Err()
}
