package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Masters is the number of shards. Default 3 (the fewest Redis
	// Cluster accepts).
	Masters int
	// Replicas per master. Default 1; -1 for none.
	Replicas int
	// NodeTimeout is cluster-node-timeout: how long a node may be
	// unreachable before it counts as failing. Default 2s.
	NodeTimeout time.Duration
}

// Cluster is a Redis Cluster of redis-server processes on loopback,
// started for tests with `redis-cli --cluster create`.
type Cluster struct {
	Nodes []*Server
	// URL reaches the cluster through every node as a seed:
	// redis+cluster://first?addr=second&addr=...
	URL string

	mu     sync.Mutex
	conns  map[string]*redis.Client // one plain client per node, by address
	killed map[string]bool          // nodes Kill stopped
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago (all held open together, so none is handed out twice).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// StartCluster starts Masters*(1+Replicas) redis-server processes with
// cluster mode on, each with its client port and cluster bus port chosen
// free, creates the cluster with redis-cli, and waits until every node
// reports every slot served and every replica in sync.
func StartCluster(opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Replicas < 0 {
		opts.Replicas = 0
	}
	if opts.NodeTimeout == 0 {
		opts.NodeTimeout = 2 * time.Second
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli not found: install Debian's redis-tools (it comes with redis-server)")
	}
	n := opts.Masters * (1 + opts.Replicas)
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{conns: map[string]*redis.Client{}, killed: map[string]bool{}}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	var addrs []string
	for i := 0; i < n; i++ {
		s, err := Start(Options{Port: ports[2*i], Args: []string{
			"--cluster-enabled", "yes",
			"--cluster-port", strconv.Itoa(ports[2*i+1]),
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
		}})
		if err != nil {
			return nil, fmt.Errorf("cluster node %d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(opts.Replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.URL = "redis+cluster://" + addrs[0]
	for i, a := range addrs[1:] {
		if i == 0 {
			c.URL += "?"
		} else {
			c.URL += "&"
		}
		c.URL += "addr=" + a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Node returns a plain (non-cluster) client of the node at addr, closed
// with the cluster.
func (c *Cluster) Node(addr string) *redis.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rdb, ok := c.conns[addr]; ok {
		return rdb
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, MaxRetries: -1, PoolSize: 2})
	c.conns[addr] = rdb
	return rdb
}

// NodeState is one node's view of itself.
type NodeState struct {
	Addr   string
	ID     string
	Master bool
	Of     string // a replica's master's node id
	Slots  [][2]int
}

// State asks every live node who it is (CLUSTER NODES, the "myself"
// line).
func (c *Cluster) State(ctx context.Context) ([]NodeState, error) {
	var out []NodeState
	for _, s := range c.live() {
		txt, err := c.Node(s.Addr).ClusterNodes(ctx).Result()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Addr, err)
		}
		for _, line := range strings.Split(txt, "\n") {
			f := strings.Fields(line)
			if len(f) < 8 || !strings.Contains(f[2], "myself") {
				continue
			}
			st := NodeState{Addr: s.Addr, ID: f[0], Master: strings.Contains(f[2], "master")}
			if f[3] != "-" {
				st.Of = f[3]
			}
			for _, r := range f[8:] {
				if strings.HasPrefix(r, "[") { // a slot being migrated
					continue
				}
				lo, hi, found := strings.Cut(r, "-")
				a, _ := strconv.Atoi(lo)
				b := a
				if found {
					b, _ = strconv.Atoi(hi)
				}
				st.Slots = append(st.Slots, [2]int{a, b})
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// Slot returns the hash slot of key, as the cluster computes it.
func (c *Cluster) Slot(ctx context.Context, key string) (int, error) {
	n, err := c.Node(c.Nodes[0].Addr).ClusterKeySlot(ctx, key).Result()
	return int(n), err
}

// Owner returns the address of the master serving key's slot (by the
// master's own account) and of one of its replicas ("" if none).
func (c *Cluster) Owner(ctx context.Context, key string) (master, replica string, err error) {
	slot, err := c.Slot(ctx, key)
	if err != nil {
		return "", "", err
	}
	states, err := c.State(ctx)
	if err != nil {
		return "", "", err
	}
	var id string
	for _, st := range states {
		for _, r := range st.Slots {
			if st.Master && slot >= r[0] && slot <= r[1] {
				master, id = st.Addr, st.ID
			}
		}
	}
	if master == "" {
		return "", "", fmt.Errorf("no master claims slot %d", slot)
	}
	for _, st := range states {
		if !st.Master && st.Of == id {
			replica = st.Addr
		}
	}
	return master, replica, nil
}

// WaitHealthy polls every node until it reports cluster_state:ok with
// every slot assigned and every node known, and every replica's link to
// its master is up; there is no event to wait on.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	var last string
	for {
		ok := true
		for _, s := range c.Nodes {
			info, err := c.Node(s.Addr).ClusterInfo(ctx).Result()
			if err != nil {
				ok, last = false, s.Addr+": "+err.Error()
				break
			}
			if !strings.Contains(info, "cluster_state:ok") ||
				!strings.Contains(info, "cluster_slots_ok:16384") ||
				!strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(c.Nodes))+"\r") {
				ok, last = false, s.Addr+": "+info
				break
			}
			repl, err := c.Node(s.Addr).Info(ctx, "replication").Result()
			if err != nil || (strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up")) {
				ok, last = false, s.Addr+": replica not in sync"
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy: %v; last: %s", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Failover runs CLUSTER FAILOVER on replica (a coordinated failover: its
// master stops taking writes, the replica catches up and takes over) and
// waits until the replica serves its master's slots by every node's
// account and the cluster is healthy again. It first waits for the
// cluster to be healthy (a replica just demoted must resync before it can
// take over), and asks again if a manual failover timed out (Redis gives
// one 5 s).
func (c *Cluster) Failover(ctx context.Context, replica string) error {
	if err := c.WaitHealthy(ctx); err != nil {
		return err
	}
	myID, err := c.Node(replica).ClusterMyID(ctx).Result()
	if err != nil {
		return err
	}
	var asked time.Time
	for {
		if time.Since(asked) > 6*time.Second {
			if err := c.Node(replica).ClusterFailover(ctx).Err(); err != nil {
				return fmt.Errorf("CLUSTER FAILOVER on %s: %w", replica, err)
			}
			asked = time.Now()
		}
		if c.serves(ctx, myID) {
			return c.WaitHealthy(ctx)
		}
		select {
		case <-ctx.Done():
			log, _ := os.ReadFile(filepath.Join(c.byAddr(replica).Dir, "redis.log"))
			return fmt.Errorf("failover to %s not seen by every node: %w\n%s", replica, ctx.Err(), log)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// serves reports whether every live node names id as the master of some
// slots.
func (c *Cluster) serves(ctx context.Context, id string) bool {
	for _, s := range c.live() {
		slots, err := c.Node(s.Addr).ClusterSlots(ctx).Result()
		if err != nil {
			return false
		}
		mine := false
		for _, sl := range slots {
			if len(sl.Nodes) > 0 && sl.Nodes[0].ID == id {
				mine = true
			}
		}
		if !mine {
			return false
		}
	}
	return true
}

// Kill stops the node at addr with SIGKILL, as a crash would. Its
// replica takes over once the other masters agree it failed (after
// cluster-node-timeout): see WaitPromoted.
func (c *Cluster) Kill(addr string) {
	c.mu.Lock()
	c.killed[addr] = true
	c.mu.Unlock()
	c.byAddr(addr).Kill()
}

// WaitPromoted waits until every live node names the node at addr as a
// master serving slots.
func (c *Cluster) WaitPromoted(ctx context.Context, addr string) error {
	id, err := c.Node(addr).ClusterMyID(ctx).Result()
	if err != nil {
		return err
	}
	for !c.serves(ctx, id) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not promoted: %w", addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (c *Cluster) live() []*Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Server
	for _, s := range c.Nodes {
		if !c.killed[s.Addr] {
			out = append(out, s)
		}
	}
	return out
}

func (c *Cluster) byAddr(addr string) *Server {
	for _, s := range c.Nodes {
		if s.Addr == addr {
			return s
		}
	}
	return &Server{}
}

// Close stops every node and removes their directories.
func (c *Cluster) Close() {
	c.mu.Lock()
	for _, rdb := range c.conns {
		rdb.Close()
	}
	c.conns = map[string]*redis.Client{}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); s.Close() }()
	}
	wg.Wait()
}

var (
	clusterOnce sync.Once
	shared      *Cluster
	clusterErr  error
)

// SharedCluster returns the cluster that tests in this process share,
// started on first use (3 masters, 3 replicas); Cleanup stops it. Tests
// that change its topology start their own with StartCluster. No node of
// it is meant to fail, so it waits 15 s before counting one as failing: a
// master busy for seconds (making a test's 64 MB entry, on a loaded
// machine) was taken for failed, and the cluster went down while other
// tests started replicas on it.
func SharedCluster() (*Cluster, error) {
	clusterOnce.Do(func() {
		shared, clusterErr = StartCluster(ClusterOptions{NodeTimeout: 15 * time.Second})
	})
	return shared, clusterErr
}
