package bus

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
)

// Topology is the kind of Redis deployment a URL names.
type Topology string

// The Redis deployments fnmesh runs on.
const (
	Single   Topology = "single"   // one server (with or without replicas nobody fails over to)
	Cluster  Topology = "cluster"  // Redis Cluster: keys spread over shards by hash slot
	Sentinel Topology = "sentinel" // a master and replicas watched by Sentinels, which fail over
)

// RedisURL is a parsed Redis URL: which topology it names and the go-redis
// options to reach it. Exactly one of the option fields is set.
type RedisURL struct {
	Topology Topology
	Single   *redis.Options
	Cluster  *redis.ClusterOptions
	Failover *redis.FailoverOptions
}

// ParseRedisURL reads the Redis URL every fnmesh component accepts
// (RedisConfig.URL, --redis, REDIS_URL):
//
//	redis://[user:pass@]host:port[/db]                 one server; rediss:// for TLS, unix:///path.sock
//	redis+cluster://[user:pass@]host:port[?addr=host:port...]
//	                                                   Redis Cluster; each address is a seed node
//	redis+sentinel://[user:pass@]host:port?master_name=NAME[&addr=host:port...][&password=P][&db=N]
//	                                                   Sentinel; the addresses are sentinels, the
//	                                                   userinfo their credentials, password (and
//	                                                   username) the master's
//
// rediss+cluster:// and rediss+sentinel:// use TLS. The plain redis:// forms
// of go-redis are read too: a redis:// URL with master_name is Sentinel
// (redis.ParseFailoverURL), one with addr parameters is a Cluster
// (redis.ParseClusterURL). Other query parameters are go-redis options
// in snake case (dial_timeout=3s, pool_size=32). Errors are
// *fnmesh.Error with code invalid_argument; the URL's password is never
// repeated in them.
func ParseRedisURL(raw string) (*RedisURL, error) {
	bad := func(err error) error {
		return fnmesh.Errorf(fnmesh.CodeInvalidArgument, "bus: Redis URL %q: %v", redact(raw), err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse quotes the whole input, password included.
		return nil, bad(errors.New("not a URL"))
	}
	scheme, topo, _ := strings.Cut(u.Scheme, "+")
	switch scheme {
	case "redis", "rediss", "unix":
	default:
		return nil, bad(fmt.Errorf("scheme %q: want redis, rediss, unix, redis+cluster or redis+sentinel (rediss+ for TLS)", u.Scheme))
	}
	q := u.Query()
	if topo == "" && scheme != "unix" {
		switch {
		case q.Has("master_name"):
			topo = string(Sentinel)
		case q.Has("addr"):
			topo = string(Cluster)
		}
	}
	plain := *u
	plain.Scheme = scheme
	out := &RedisURL{}
	switch Topology(topo) {
	case "":
		out.Topology = Single
		out.Single, err = redis.ParseURL(plain.String())
	case Cluster:
		if scheme == "unix" {
			return nil, bad(fmt.Errorf("a cluster is reached over TCP, not a unix socket"))
		}
		if plain.Path != "" && plain.Path != "/" && plain.Path != "/0" {
			return nil, bad(fmt.Errorf("a cluster has only database 0, not %s", plain.Path))
		}
		plain.Path = ""
		out.Topology = Cluster
		out.Cluster, err = redis.ParseClusterURL(plain.String())
	case Sentinel:
		if scheme == "unix" {
			return nil, bad(fmt.Errorf("sentinels are reached over TCP, not a unix socket"))
		}
		if !q.Has("master_name") || q.Get("master_name") == "" {
			return nil, bad(fmt.Errorf("a sentinel URL needs master_name=NAME, the name the sentinels monitor"))
		}
		out.Topology = Sentinel
		out.Failover, err = redis.ParseFailoverURL(plain.String())
	default:
		return nil, bad(fmt.Errorf("scheme %q: unknown topology %q, want cluster or sentinel", u.Scheme, topo))
	}
	if err != nil {
		return nil, bad(err)
	}
	return out, nil
}

// NewClient returns a go-redis client for u. It first fills u's options
// with fnmesh's defaults for what the URL leaves out (per node in a
// cluster):
//   - a pool of 64 connections;
//   - during an outage, fail a command within about a second rather than
//     go-redis's default retries and 5 s dial timeout (2 retries, backoff
//     at most 100 ms, dial timeout 2 s): callers get unavailable while
//     there is time left to act on it;
//   - RESP2: RESP3 makes go-redis check every connection for push
//     notifications before each command, which we do not use;
//   - a cluster client re-reads the slot map as soon as a node stops
//     answering (see followTopology).
func (u *RedisURL) NewClient() redis.UniversalClient {
	defaults := func(pool, retries, proto *int, backoff, dial *time.Duration) {
		if *pool == 0 {
			*pool = 64
		}
		if *retries == 0 {
			*retries = 2
		}
		if *backoff == 0 {
			*backoff = 100 * time.Millisecond
		}
		if *dial == 0 {
			*dial = 2 * time.Second
		}
		if *proto == 0 {
			*proto = 2
		}
	}
	switch u.Topology {
	case Cluster:
		o := u.Cluster
		defaults(&o.PoolSize, &o.MaxRetries, &o.Protocol, &o.MaxRetryBackoff, &o.DialTimeout)
		cc := redis.NewClusterClient(o)
		followTopology(cc)
		return cc
	case Sentinel:
		o := u.Failover
		defaults(&o.PoolSize, &o.MaxRetries, &o.Protocol, &o.MaxRetryBackoff, &o.DialTimeout)
		return redis.NewFailoverClient(o)
	default:
		o := u.Single
		defaults(&o.PoolSize, &o.MaxRetries, &o.Protocol, &o.MaxRetryBackoff, &o.DialTimeout)
		return redis.NewClient(o)
	}
}

// redact hides the password of a URL in error messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i, j := strings.Index(raw, "://"), strings.LastIndex(raw, "@"); i >= 0 && j > i {
			return raw[:i+3] + "REDACTED" + raw[j:]
		}
		return raw
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "REDACTED")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
