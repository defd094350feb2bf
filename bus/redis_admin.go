package bus

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReplayDeadLetters implements Bus.
func (r *Redis) ReplayDeadLetters(ctx context.Context, service string, ids ...string) (int, error) {
	return r.ReplayDeadLettersWithToken(ctx, service, "", ids...)
}

// ReplayDeadLettersWithToken replays as ReplayDeadLetters does, sending
// token with each request instead of the one it first came with (which
// has often expired by the time a dead letter is replayed). An empty
// token keeps the original.
func (r *Redis) ReplayDeadLettersWithToken(ctx context.Context, service, token string, ids ...string) (int, error) {
	dead := DeadLetterTopic(service)
	xs, err := r.deadEntries(ctx, dead, ids)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, x := range xs {
		m := entryMessage(x)
		replay := replayMessage(m.Metadata, x.ID)
		if token != "" {
			replay[FieldToken] = token
		}
		vals := entryValues(replay, m.Payload)
		pipe := r.rdb.TxPipeline()
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: FunctionTopic(service, replay[FieldFunction]), Values: vals})
		pipe.XDel(ctx, dead, x.ID)
		if _, err := pipe.Exec(ctx); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// PurgeDeadLetters implements Bus.
func (r *Redis) PurgeDeadLetters(ctx context.Context, service string, ids ...string) (int, error) {
	dead := DeadLetterTopic(service)
	if len(ids) == 0 {
		n, err := r.rdb.XLen(ctx, dead).Result()
		if err != nil {
			return 0, err
		}
		return int(n), r.rdb.Del(ctx, dead).Err()
	}
	n, err := r.rdb.XDel(ctx, dead, ids...).Result()
	return int(n), err
}

func (r *Redis) deadEntries(ctx context.Context, dead string, ids []string) ([]redis.XMessage, error) {
	if len(ids) == 0 {
		return r.rdb.XRange(ctx, dead, "-", "+").Result()
	}
	var out []redis.XMessage
	for _, id := range ids {
		xs, err := r.rdb.XRange(ctx, dead, id, id).Result()
		if err != nil {
			return nil, err
		}
		if len(xs) == 0 {
			return nil, errors.New("bus: no dead letter " + id)
		}
		out = append(out, xs...)
	}
	return out, nil
}

// replayMessage turns a dead letter's fields back into a request: the
// original fields without the failure record, the reply stream (its
// caller stopped waiting long ago) and the deadline; a field names the
// dead letter it came from.
func replayMessage(fields map[string]string, deadID string) map[string]string {
	out := make(map[string]string, len(fields))
	for k, v := range fields {
		switch k {
		case FieldReason, FieldCode, FieldAttempts, FieldReplica, FieldAt, FieldEntry, FieldReplyTo, FieldDeadline:
			continue
		}
		out[k] = v
	}
	out[FieldReplayOf] = deadID
	return out
}

// Backlog implements Bus. Waiting is the group's lag (entries added and
// not yet read); where Redis cannot tell it (after deletions) it is the
// stream length minus the pending entries, an upper bound.
func (r *Redis) Backlog(ctx context.Context, service string) (Backlog, error) {
	key := RequestTopic(service)
	pipe := r.rdb.Pipeline()
	groups := pipe.XInfoGroups(ctx, key)
	xlen := pipe.XLen(ctx, key)
	limit := pipe.HGet(ctx, LimitsTopic(service), "max_backlog")
	pipe.Exec(ctx)
	var b Backlog
	if v, err := limit.Int64(); err == nil {
		b.MaxBacklog = v
	}
	gs, err := groups.Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") || errors.Is(err, redis.Nil) {
			return b, nil
		}
		if strings.HasPrefix(err.Error(), "NOGROUP") || strings.Contains(err.Error(), "ERR no such key") {
			return b, nil
		}
		// A stream without a group (no replica ever ran): all waiting.
		if n, lerr := xlen.Result(); lerr == nil {
			b.Waiting = n
			return b, nil
		}
		return b, err
	}
	if len(gs) == 0 {
		b.Waiting = xlen.Val()
		return b, nil
	}
	for _, g := range gs {
		if g.Name != Group {
			continue
		}
		b.Pending = g.Pending
		if g.Lag >= 0 && (g.Lag > 0 || g.EntriesRead > 0 || xlen.Val() == 0) {
			b.Waiting = g.Lag
		} else {
			b.Waiting = max(xlen.Val()-g.Pending, 0)
		}
	}
	return b, nil
}

// SetLimits implements Bus.
func (r *Redis) SetLimits(ctx context.Context, service string, l Limits) error {
	if l.MaxBacklog <= 0 {
		return r.rdb.HDel(ctx, LimitsTopic(service), "max_backlog").Err()
	}
	return r.rdb.HSet(ctx, LimitsTopic(service), "max_backlog", l.MaxBacklog).Err()
}

// Idempotency implements Bus.
func (r *Redis) Idempotency() IdempotencyStore { return redisIdem{r.rdb} }

type redisIdem struct{ rdb redis.UniversalClient }

// Key values: "r|OWNER" while running, "d|OWNER|RESULT" when done.
var idemBegin = redis.NewScript(`
if redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, ''} end
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], 'r|' .. ARGV[1], 'PX', ARGV[2]) return {0, ''} end
if v == 'r|' .. ARGV[1] then return {1, ''} end
if string.sub(v, 1, 2) == 'd|' then return {3, v} end
return {2, ''}
`)

var idemRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == 'r|' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

func (s redisIdem) Begin(ctx context.Context, service, key, owner string, ttl time.Duration) (IdemState, []byte, error) {
	res, err := idemBegin.Run(ctx, s.rdb, []string{IdempotencyTopic(service, key)}, owner, ttl.Milliseconds()).Slice()
	if err != nil {
		return 0, nil, err
	}
	state, _ := res[0].(int64)
	if IdemState(state) == IdemDone {
		v, _ := res[1].(string)
		// "d|OWNER|RESULT"
		if parts := strings.SplitN(v, "|", 3); len(parts) == 3 {
			return IdemDone, []byte(parts[2]), nil
		}
		return IdemDone, nil, nil
	}
	return IdemState(state), nil, nil
}

func (s redisIdem) Complete(ctx context.Context, service, key, owner string, result []byte, ttl time.Duration) error {
	return s.rdb.Set(ctx, IdempotencyTopic(service, key), "d|"+owner+"|"+string(result), ttl).Err()
}

func (s redisIdem) Release(ctx context.Context, service, key, owner string) error {
	return idemRelease.Run(ctx, s.rdb, []string{IdempotencyTopic(service, key)}, owner).Err()
}

// DeadLetterServices lists the services that have a dead-letter stream.
func (r *Redis) DeadLetterServices(ctx context.Context) ([]string, error) {
	keys, err := scanKeys(ctx, r.rdb, "fnmesh:{*}:dead")
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if svc, ok := strings.CutPrefix(k, "fnmesh:{"); ok {
			if svc, ok = strings.CutSuffix(svc, "}:dead"); ok {
				out = append(out, svc)
			}
		}
	}
	return out, nil
}

// FindDeadLetter looks for the dead letter id in every service's
// dead-letter stream.
func (r *Redis) FindDeadLetter(ctx context.Context, id string) (string, DeadLetter, error) {
	services, err := r.DeadLetterServices(ctx)
	if err != nil {
		return "", DeadLetter{}, err
	}
	for _, svc := range services {
		xs, err := r.rdb.XRange(ctx, DeadLetterTopic(svc), id, id).Result()
		if err != nil {
			return "", DeadLetter{}, err
		}
		if len(xs) == 1 {
			m := entryMessage(xs[0])
			return svc, decodeDeadLetter(xs[0].ID, m.Metadata, m.Payload), nil
		}
	}
	return "", DeadLetter{}, errors.New("bus: no dead letter " + id)
}

// scanKeys returns the keys matching pattern, on every master of a
// cluster.
func scanKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	var (
		mu  sync.Mutex
		out []string
	)
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			out = append(out, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err := c.ForEachMaster(ctx, scan)
		return out, err
	case *redis.Client:
		return out, scan(ctx, c)
	}
	it := rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for it.Next(ctx) {
		out = append(out, it.Val())
	}
	return out, it.Err()
}
