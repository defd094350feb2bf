// The keep-alive loop of a caller's inbox: its TTL, its recreation after a
// restart that lost it, and trimming the replies already read.

package bus

import (
	"context"
	"time"
)

// keepAlive refreshes the inbox's TTL, recreates it if it vanished, and
// trims the replies already read (XTRIM MINID), so an inbox holds about
// one entry per call in flight.
func (in *redisInbox) keepAlive(ctx context.Context) {
	defer in.loops.Done()
	defer func() {
		// Our own stream: remove it now rather than at TTL.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		in.r.rdb.Del(dctx, in.topic)
	}()
	// Refresh often enough to notice a lost key within a second or two.
	t := time.NewTicker(min(in.r.cfg.InboxTTL/3, in.r.cfg.InboxRefresh))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ok, err := in.r.rdb.PExpire(ctx, in.topic, in.r.cfg.InboxTTL).Result()
			if err == nil && !ok {
				// The key is gone (Redis restarted without it): callers
				// waiting now time out, new ones need the stream back.
				in.create(ctx)
				continue
			}
			in.r.rdb.XTrimMinIDApprox(ctx, in.topic, nextID(in.last()), 0)
		case <-ctx.Done():
			return
		}
	}
}
