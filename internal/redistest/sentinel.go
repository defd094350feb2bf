package redistest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelSet is a master, its replica and Sentinels watching them, all
// redis-server processes on loopback, started for tests.
type SentinelSet struct {
	Master, Replica *Server
	Sentinels       []*Server
	MasterName      string
	// URL reaches the master through the sentinels:
	// redis+sentinel://s1?master_name=NAME&addr=s2&addr=s3
	URL string

	mu    sync.Mutex
	conns map[string]*redis.SentinelClient
}

// StartSentinels starts a master, one replica of it and n sentinels
// (quorum n/2+1) monitoring it as "fnmesh", and waits until every
// sentinel knows the replica and the other sentinels, so that a failover
// can be agreed on.
func StartSentinels(n int) (_ *SentinelSet, err error) {
	if n < 1 {
		n = 1
	}
	ss := &SentinelSet{MasterName: "fnmesh", conns: map[string]*redis.SentinelClient{}}
	defer func() {
		if err != nil {
			ss.Close()
		}
	}()
	if ss.Master, err = Start(Options{}); err != nil {
		return nil, err
	}
	host, port, _ := strings.Cut(ss.Master.Addr, ":")
	if ss.Replica, err = Start(Options{Args: []string{"--replicaof", host, port}}); err != nil {
		return nil, err
	}
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for i := 0; i < n; i++ {
		dir, err := os.MkdirTemp("", "fnmesh-redis-")
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s %[4]d\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 10000\n"+
			"sentinel parallel-syncs %[1]s 1\n", ss.MasterName, host, port, n/2+1)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			return nil, err
		}
		s, err := Start(Options{Dir: dir, Port: ports[i], ConfigFile: conf, Args: []string{"--sentinel"}})
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("sentinel %d: %w", i, err)
		}
		ss.Sentinels = append(ss.Sentinels, s)
		addrs = append(addrs, s.Addr)
	}
	ss.URL = "redis+sentinel://" + addrs[0] + "?master_name=" + ss.MasterName
	for _, a := range addrs[1:] {
		ss.URL += "&addr=" + a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Sentinels find replicas through INFO (every 10 s at first) and each
	// other through hello messages (every 2 s): poll, nothing signals it.
	for _, s := range ss.Sentinels {
		sc := ss.sentinel(s.Addr)
		for {
			reps, err1 := sc.Replicas(ctx, ss.MasterName).Result()
			peers, err2 := sc.Sentinels(ctx, ss.MasterName).Result()
			if err1 == nil && err2 == nil && len(reps) == 1 && reps[0]["flags"] == "slave" && len(peers) == n-1 {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("sentinel %s: replicas %v, peers %v, errors %v %v: %w", s.Addr, reps, len(peers), err1, err2, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return ss, nil
}

func (ss *SentinelSet) sentinel(addr string) *redis.SentinelClient {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if sc, ok := ss.conns[addr]; ok {
		return sc
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: addr, Protocol: 2})
	ss.conns[addr] = sc
	return sc
}

// MasterAddr returns the master's address as the first sentinel sees it.
func (ss *SentinelSet) MasterAddr(ctx context.Context) (string, error) {
	hp, err := ss.sentinel(ss.Sentinels[0].Addr).GetMasterAddrByName(ctx, ss.MasterName).Result()
	if err != nil {
		return "", err
	}
	return hp[0] + ":" + hp[1], nil
}

// Failover asks a sentinel to fail over now (SENTINEL FAILOVER) and
// waits until every sentinel names the former replica as master and the
// former replica says it is master. (The sentinels turn the former master
// into a replica some seconds later; clients have switched by then, told
// by the sentinels' +switch-master.)
func (ss *SentinelSet) Failover(ctx context.Context) (newMaster string, err error) {
	old, err := ss.MasterAddr(ctx)
	if err != nil {
		return "", err
	}
	if err := ss.sentinel(ss.Sentinels[0].Addr).Failover(ctx, ss.MasterName).Err(); err != nil {
		return "", fmt.Errorf("SENTINEL FAILOVER: %w", err)
	}
	for {
		done := true
		for _, s := range ss.Sentinels {
			hp, err := ss.sentinel(s.Addr).GetMasterAddrByName(ctx, ss.MasterName).Result()
			if err != nil || hp[0]+":"+hp[1] == old {
				done = false
				break
			}
			newMaster = hp[0] + ":" + hp[1]
		}
		if done && role(ctx, newMaster) == "master" {
			return newMaster, nil
		}
		select {
		case <-ctx.Done():
			var logs []string
			for _, s := range ss.Sentinels {
				b, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
				logs = append(logs, s.Addr+":\n"+string(b))
			}
			return "", fmt.Errorf("sentinel failover from %s not complete: %w\n%s", old, ctx.Err(), strings.Join(logs, "\n"))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// role returns the first element of ROLE at addr: master, slave or
// sentinel ("" if it does not answer).
func role(ctx context.Context, addr string) string {
	rdb := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, MaxRetries: -1})
	defer rdb.Close()
	v, err := rdb.Do(ctx, "ROLE").Slice()
	if err != nil || len(v) == 0 {
		return ""
	}
	s, _ := v[0].(string)
	return s
}

// Close stops every process and removes their directories.
func (ss *SentinelSet) Close() {
	ss.mu.Lock()
	for _, sc := range ss.conns {
		sc.Close()
	}
	ss.conns = map[string]*redis.SentinelClient{}
	ss.mu.Unlock()
	for _, s := range append(ss.Sentinels, ss.Replica, ss.Master) {
		if s != nil {
			s.Close()
		}
	}
}
