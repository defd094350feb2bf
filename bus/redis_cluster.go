package bus

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// followTopology makes a cluster client re-read the slot map (CLUSTER
// SLOTS; go-redis runs one reload at a time, 200 ms apart at most) when a
// command fails without an answer from Redis. A master that crashed sends
// no MOVED: without this, go-redis keeps routing its slots to it until
// its periodic reload, 60 s later, long after a replica took over.
func followTopology(cc *redis.ClusterClient) {
	cc.AddHook(topologyHook{cc})
}

type topologyHook struct{ cc *redis.ClusterClient }

func (h topologyHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h topologyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if unanswered(err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

func (h topologyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if unanswered(cmd.Err()) {
				h.cc.ReloadState(ctx)
				break
			}
		}
		return err
	}
}

// unanswered reports whether err means no Redis server answered (a
// refused or broken connection, a timeout), as opposed to an error reply,
// a nil reply, a closed client or the caller's own context.
func unanswered(err error) bool {
	if err == nil || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}
