package registry

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
)

// Key names of the registry on Redis. The service's hash tag keeps them
// in the slot of its request stream.
func ReplicasKey(service string) string { return "fnmesh:{" + service + "}:replicas" }
func BeatsKey(service string) string    { return "fnmesh:{" + service + "}:beats" }
func StatsKey(service string) string    { return "fnmesh:{" + service + "}:stats" }
func KnownKey(service string) string    { return "fnmesh:{" + service + "}:known" }

// ServicesKey lists services by their last heartbeat.
const ServicesKey = "fnmesh:services"

// RedisStore is the registry on Redis. See the package doc for its keys.
type RedisStore struct {
	rdb redis.UniversalClient
}

// NewRedisStore returns the registry store on rdb.
func NewRedisStore(rdb redis.UniversalClient) *RedisStore { return &RedisStore{rdb: rdb} }

var _ Store = (*RedisStore)(nil)

// beatScript writes an announcement ("announce") or a heartbeat
// ("beat"), then prunes expired replicas and forgotten functions and
// renews the keys' TTL, all on the server's clock.
//
//	KEYS: beats, replicas, stats, known
//	ARGV: mode, id, ttl ms, keep ms, record or stats JSON, function...
//
// It returns the server time in ms, or -1 for a heartbeat whose record
// is gone.
var beatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl, keep = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == 'beat' then
  local exp = redis.call('ZSCORE', KEYS[1], id)
  if redis.call('HEXISTS', KEYS[2], id) == 0 or not exp or tonumber(exp) <= now then
    return -1
  end
  redis.call('HSET', KEYS[3], id, ARGV[5])
else
  redis.call('HSET', KEYS[2], id, ARGV[5])
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZADD', KEYS[1], now + ttl, id)
for i = 6, #ARGV do
  redis.call('HSET', KEYS[4], ARGV[i], now)
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do
  redis.call('HDEL', KEYS[2], d)
  redis.call('HDEL', KEYS[3], d)
  redis.call('ZREM', KEYS[1], d)
end
local known = redis.call('HGETALL', KEYS[4])
for i = 1, #known, 2 do
  if tonumber(known[i + 1]) < now - keep then
    redis.call('HDEL', KEYS[4], known[i])
  end
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], keep)
end
return now
`)

func serviceKeys(service string) []string {
	return []string{BeatsKey(service), ReplicasKey(service), StatsKey(service), KnownKey(service)}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func (s *RedisStore) run(ctx context.Context, mode, service, id string, ttl, keep time.Duration, body []byte, functions []string) (int64, error) {
	args := make([]any, 0, 5+len(functions))
	args = append(args, mode, id, ms(ttl), ms(keep), body)
	for _, f := range functions {
		args = append(args, f)
	}
	now, err := beatScript.Run(ctx, s.rdb, serviceKeys(service), args...).Int64()
	if err != nil {
		return 0, err
	}
	if now > 0 {
		// The index of services, for listing; not in the service's slot.
		pipe := s.rdb.Pipeline()
		pipe.ZAdd(ctx, ServicesKey, redis.Z{Score: float64(now), Member: service})
		pipe.ZRemRangeByScore(ctx, ServicesKey, "-inf", strconv.FormatInt(now-keep.Milliseconds(), 10))
		pipe.PExpire(ctx, ServicesKey, keep)
		if _, err := pipe.Exec(ctx); err != nil {
			return now, err
		}
	}
	return now, nil
}

// Announce implements Store.
func (s *RedisStore) Announce(ctx context.Context, r *Replica, ttl, keep time.Duration) error {
	rec, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fns := make([]string, len(r.Functions))
	for i, f := range r.Functions {
		fns[i] = f.Name
	}
	_, err = s.run(ctx, "announce", r.Service, r.ID, ttl, keep, rec, fns)
	return err
}

// Heartbeat implements Store.
func (s *RedisStore) Heartbeat(ctx context.Context, service, id string, functions []string, stats Stats, ttl, keep time.Duration) (bool, error) {
	st, err := json.Marshal(stats)
	if err != nil {
		return false, err
	}
	now, err := s.run(ctx, "beat", service, id, ttl, keep, st, functions)
	return now > 0, err
}

// Leave implements Store.
func (s *RedisStore) Leave(ctx context.Context, service, id string) error {
	pipe := s.rdb.TxPipeline()
	pipe.ZRem(ctx, BeatsKey(service), id)
	pipe.HDel(ctx, ReplicasKey(service), id)
	pipe.HDel(ctx, StatsKey(service), id)
	_, err := pipe.Exec(ctx)
	return err
}

// Services implements Store.
func (s *RedisStore) Services(ctx context.Context) ([]string, error) {
	out, err := s.rdb.ZRange(ctx, ServicesKey, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// Service implements Store: one round trip.
func (s *RedisStore) Service(ctx context.Context, service string) (*ServiceView, error) {
	pipe := s.rdb.Pipeline()
	timeCmd := pipe.Time(ctx)
	beats := pipe.ZRangeWithScores(ctx, BeatsKey(service), 0, -1)
	recs := pipe.HGetAll(ctx, ReplicasKey(service))
	stats := pipe.HGetAll(ctx, StatsKey(service))
	known := pipe.HKeys(ctx, KnownKey(service))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	now := timeCmd.Val()
	nowMs := now.UnixMilli()
	v := &ServiceView{Name: service, Known: known.Val()}
	for _, z := range beats.Val() {
		id, _ := z.Member.(string)
		if int64(z.Score) <= nowMs {
			continue
		}
		raw, ok := recs.Val()[id]
		if !ok {
			continue
		}
		var r Replica
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			continue // not ours to judge; a reader must not fail on one bad record
		}
		// Expiry on the reader's clock: the server's, shifted by the skew.
		r.Expires = time.UnixMilli(int64(z.Score)).Add(time.Since(now))
		if st, ok := stats.Val()[id]; ok {
			json.Unmarshal([]byte(st), &r.Stats)
		}
		v.Replicas = append(v.Replicas, r)
	}
	sortReplicas(v.Replicas)
	sort.Strings(v.Known)
	return v, nil
}

// Queue implements Store: XINFO GROUPS gives each request stream's lag
// (entries not yet delivered) and pending count, summed over the
// service's stream and those of its versioned functions; XLEN counts
// dead letters.
func (s *RedisStore) Queue(ctx context.Context, service string) (Queue, error) {
	known, err := s.rdb.HKeys(ctx, KnownKey(service)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Queue{}, err
	}
	topics := requestTopics(service, known)
	pipe := s.rdb.Pipeline()
	groups := make([]*redis.XInfoGroupsCmd, len(topics))
	lengths := make([]*redis.IntCmd, len(topics))
	for i, t := range topics {
		groups[i] = pipe.XInfoGroups(ctx, t)
		lengths[i] = pipe.XLen(ctx, t)
	}
	dead := pipe.XLen(ctx, bus.DeadLetterTopic(service))
	pipe.Exec(ctx) // errors are read per command below
	var q Queue
	if err := dead.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return q, err
	}
	q.DeadLetters = dead.Val()
	for i := range topics {
		backlog, pending, err := streamQueue(groups[i], lengths[i].Val())
		if err != nil {
			return q, err
		}
		q.Backlog += backlog
		q.Pending += pending
	}
	return q, nil
}

func streamQueue(groups *redis.XInfoGroupsCmd, length int64) (backlog, pending int64, err error) {
	gs, err := groups.Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return 0, 0, nil
		}
		return 0, 0, err
	}
	for _, g := range gs {
		if g.Name != bus.Group {
			continue
		}
		if g.Lag < 0 { // unknown after deletions: at most the whole stream
			return max(length-g.Pending, 0), g.Pending, nil
		}
		return g.Lag, g.Pending, nil
	}
	return length, 0, nil // no replica ever ran: nobody took anything
}

// requestTopics lists the request streams of a service that served
// functions.
func requestTopics(service string, functions []string) []string {
	set := map[string]bool{bus.RequestTopic(service): true}
	for _, f := range functions {
		set[bus.FunctionTopic(service, f)] = true
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// RecordCount returns how many replica records, live or expired but not
// yet pruned, the registry holds for service (for leak tests).
func (s *RedisStore) RecordCount(ctx context.Context, service string) (int, error) {
	n, err := s.rdb.HLen(ctx, ReplicasKey(service)).Result()
	return int(n), err
}
