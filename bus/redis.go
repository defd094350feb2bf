package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/internal/wire"
)

// RedisConfig configures NewRedis. Zero values take the defaults written
// on each field.
type RedisConfig struct {
	// URL of the server, cluster or sentinels (see ParseRedisURL):
	// redis://host:port[/db] for one server, redis+cluster://host:port
	// [?addr=host:port...] for a Redis Cluster, redis+sentinel://host:port
	// ?master_name=NAME[&addr=host:port...] for Sentinel; rediss for TLS.
	// Ignored when Client is set.
	URL string
	// Client, when set, is used instead of dialling URL: a *redis.Client
	// (one server, or redis.NewFailoverClient for Sentinel), a
	// *redis.ClusterClient, or what redis.NewUniversalClient returns. The
	// bus does not close it.
	Client redis.UniversalClient
	// Username and Password log in as a Redis ACL user (AUTH user
	// password), over what the URL says. docs/SECURITY.md lists the
	// smallest ACL a service and a caller need.
	Username, Password string
	// TLS, when set, turns TLS on (also for a redis:// URL) with this
	// configuration; rediss:// alone uses the system's CAs. See TLSFiles.
	TLS *tls.Config

	// RequestMaxLen, when above 0, caps each request stream at about that
	// many entries (XADD MAXLEN ~). Entries past the cap are dropped even if
	// no replica ran them, so the default, 0, instead trims only entries
	// every consumer group has acknowledged (XTRIM MINID), every
	// TrimInterval.
	RequestMaxLen int64
	// TrimInterval is how often a replica trims acknowledged entries from
	// its request stream. Default 5s.
	TrimInterval time.Duration
	// ReplyMaxLen caps each reply stream (XADD MAXLEN ~). A reply stream
	// holds at most one unread reply per call in flight, so this bounds a
	// dead reader, not a live one. Default 10000.
	ReplyMaxLen int64
	// DeadLetterMaxLen caps each dead-letter stream. Default 100000.
	DeadLetterMaxLen int64
	// InboxTTL is how long a reply stream outlives a caller that stopped
	// without closing; a live caller refreshes it every InboxTTL/3.
	// Default 60s.
	InboxTTL time.Duration
	// InboxRefresh is how often a caller refreshes its reply stream's
	// TTL, trims the replies it has read, and recreates the stream if it
	// vanished. Default 2s.
	InboxRefresh time.Duration
	// BlockTime bounds each blocking read, so readers notice a lost
	// connection. Default 2s.
	BlockTime time.Duration
	// ReadBatch is the most entries one XREADGROUP or XREAD takes.
	// Default 128.
	ReadBatch int64
	// MaxReplyBytes bounds each field of a reply the bus's inboxes read:
	// a longer one is skipped as it arrives, never buffered, and fails
	// its call with resource_exhausted. Default 16 MiB.
	MaxReplyBytes int
	// DrainTimeout bounds how long Close waits for the acks and hand-backs
	// of messages already delivered. Default 10s.
	DrainTimeout time.Duration
	// ClaimIdle is how long an entry taken by a replica may look idle
	// before another replica takes it over: the time to notice a dead
	// replica. Live replicas renew their entries every ClaimIdle/3, so a
	// slow request is never taken from a live replica. Default 30s.
	ClaimIdle time.Duration
	// ClaimInterval is how often each replica looks for entries to take
	// over, including entries a stopping replica handed back. Default 1s.
	ClaimInterval time.Duration
	// ConsumerExpiry is how long a consumer (a replica) with nothing
	// pending may stay silent before it is removed from the group.
	// Default 1h.
	ConsumerExpiry time.Duration
	// NoAutoPipeline sends each XADD on its own round trip. By default
	// concurrent requests and replies share round trips (see combiner.go):
	// fewer syscalls on both sides, about 1.5x the calls per second at 64
	// in flight on a 2-core machine.
	NoAutoPipeline bool
}

func (c *RedisConfig) setDefaults() {
	if c.TrimInterval == 0 {
		c.TrimInterval = 5 * time.Second
	}
	if c.ReplyMaxLen == 0 {
		c.ReplyMaxLen = 10000
	}
	if c.DeadLetterMaxLen == 0 {
		c.DeadLetterMaxLen = 100000
	}
	if c.InboxTTL == 0 {
		c.InboxTTL = 60 * time.Second
	}
	if c.InboxRefresh == 0 {
		c.InboxRefresh = 2 * time.Second
	}
	if c.BlockTime == 0 {
		c.BlockTime = 2 * time.Second
	}
	if c.MaxReplyBytes == 0 {
		c.MaxReplyBytes = 16 << 20
	}
	if c.ReadBatch == 0 {
		c.ReadBatch = 128
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.ClaimIdle == 0 {
		c.ClaimIdle = 30 * time.Second
	}
	if c.ClaimInterval == 0 {
		c.ClaimInterval = time.Second
	}
	if c.ConsumerExpiry == 0 {
		c.ConsumerExpiry = time.Hour
	}
}

// Validate reports every problem with c.
func (c RedisConfig) Validate() error {
	var errs []error
	if c.Client == nil && c.URL == "" {
		errs = append(errs, errors.New("bus: RedisConfig needs URL or Client"))
	}
	if c.Client == nil && c.URL != "" {
		if _, err := ParseRedisURL(c.URL); err != nil {
			errs = append(errs, err)
		}
	}
	for name, v := range map[string]int64{"RequestMaxLen": c.RequestMaxLen, "ReplyMaxLen": c.ReplyMaxLen, "DeadLetterMaxLen": c.DeadLetterMaxLen, "ReadBatch": c.ReadBatch, "MaxReplyBytes": int64(c.MaxReplyBytes)} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("bus: RedisConfig.%s is %d, want 0 or more", name, v))
		}
	}
	for name, v := range map[string]time.Duration{"TrimInterval": c.TrimInterval, "InboxTTL": c.InboxTTL, "InboxRefresh": c.InboxRefresh, "BlockTime": c.BlockTime, "DrainTimeout": c.DrainTimeout, "ClaimIdle": c.ClaimIdle, "ClaimInterval": c.ClaimInterval, "ConsumerExpiry": c.ConsumerExpiry} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("bus: RedisConfig.%s is %v, want 0 or more", name, v))
		}
	}
	if c.ClaimIdle > 0 && c.ClaimIdle < 300*time.Millisecond {
		errs = append(errs, fmt.Errorf("bus: RedisConfig.ClaimIdle is %v, want at least 300ms", c.ClaimIdle))
	}
	if c.InboxTTL > 0 && c.InboxTTL < time.Second {
		errs = append(errs, fmt.Errorf("bus: RedisConfig.InboxTTL is %v, want at least 1s", c.InboxTTL))
	}
	return errors.Join(errs...)
}

// Redis is the Bus on Redis Streams. See docs/PROTOCOL.md for the keys
// and fields it uses.
type Redis struct {
	cfg     RedisConfig
	rdb     redis.UniversalClient
	comb    *combiner // shares round trips between concurrent XADDs
	ownsRDB bool
	// failover holds the options of a Sentinel URL: each blocking reader
	// is a failover client of its own, so that it too drops its
	// connection when the sentinels switch masters.
	failover *redis.FailoverOptions
	// sentinels name the master the bus's own connections dial, and
	// close them when they switch masters; nil without a Sentinel URL.
	sentinels *wire.Sentinels
	user      string // the ACL user it logs in as

	mu     sync.Mutex
	closed bool
	done   chan struct{}
	subs   []io.Closer // subscribers and inboxes, closed with the bus

	inflight sync.WaitGroup // entries delivered by group subscribers and not yet settled
}

var _ Bus = (*Redis)(nil)

func (r *Redis) track(s io.Closer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs = append(r.subs, s)
}

func (r *Redis) untrack(s io.Closer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.subs {
		if x == s {
			r.subs = append(r.subs[:i], r.subs[i+1:]...)
			return
		}
	}
}

// NewRedis connects to Redis. It does not wait for the server: commands
// fail with an error until it is reachable.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Redis{cfg: cfg, rdb: cfg.Client, done: make(chan struct{})}
	if r.rdb == nil {
		u, _ := ParseRedisURL(cfg.URL) // checked by Validate
		cfg.applySecurity(u)
		r.rdb = u.NewClient()
		r.ownsRDB = true
		r.failover = u.Failover
		if u.Failover != nil {
			r.sentinels = wire.NewSentinels(*u.Failover)
		}
	}
	r.comb = newCombiner(r.rdb, r.newWireDialer(), cfg.DeadLetterMaxLen)
	r.user = usernameOf(r.rdb)
	if r.user != "" && !validACLUser(r.user) {
		r.Close()
		return nil, fmt.Errorf("bus: Redis user name %q cannot name inboxes: use letters, digits, '_', '-' or '.' (at most 64)", r.user)
	}
	return r, nil
}

// usernameOf returns the ACL user rdb logs in as ("" for the default).
func usernameOf(rdb redis.UniversalClient) string {
	switch c := rdb.(type) {
	case *redis.Client:
		return c.Options().Username
	case *redis.ClusterClient:
		return c.Options().Username
	}
	return ""
}

// aclUser is the ACL user the bus logs in as: its callers' inboxes carry
// it (InboxTopic).
func (r *Redis) aclUser() string {
	if r.user == "default" {
		return ""
	}
	return r.user
}

// Client returns the Redis client the bus uses, for tools that inspect
// streams (the CLI, tests).
func (r *Redis) Client() redis.UniversalClient { return r.rdb }

// Close stops every subscriber of the bus and, unless the client was
// passed in, closes the client.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	subs := r.subs
	r.mu.Unlock()
	for _, sub := range subs {
		sub.Close()
	}
	// Let the last acks and hand-backs of delivered messages go out.
	settled := make(chan struct{})
	go func() { r.inflight.Wait(); close(settled) }()
	select {
	case <-settled:
	case <-time.After(r.cfg.DrainTimeout):
	}
	close(r.done)
	r.comb.close() // sends the last acks
	if r.sentinels != nil {
		r.sentinels.Close()
	}
	if r.ownsRDB {
		return r.rdb.Close()
	}
	return nil
}

func (r *Redis) isClosed() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// blockingReader is a client of one connection for stream reads
// (XREADGROUP/XREAD BLOCK, which a context cannot interrupt: go-redis
// #2556; and XAUTOCLAIM). unblock ends a waiting read with CLIENT
// UNBLOCK; close closes the connection. It reads on a wire.Conn of its
// own (readRaw), which cuts fields above maxField short from their length
// header: to the one server (or Sentinel master), or in a cluster to the
// master that owns the slot of the key read, found again when the slot
// moves. Where a wire.Conn cannot repeat the client's set-up (an
// OnConnect hook, streaming credentials, a Sentinel client passed in), it
// reads through go-redis, whole.
type blockingReader struct {
	redis.UniversalClient
	owner *Redis
	own   bool // false: shares the bus's client (unknown kind)

	// Reads go on a wire.Conn: the read loop writes the command and reads
	// the reply's RESP itself (readRaw). On one server (or a Sentinel
	// master) dialer dials it; in a cluster, cluster (the bus's client)
	// finds the master of the key and a dialer is made from that node's
	// options. Both are nil when reads go through go-redis.
	dialer   *wire.Dialer
	cluster  *redis.ClusterClient
	movedTo  string     // a cluster's MOVED target, dialled next
	wireAddr string     // the node wire is connected to ("" for one server)
	wire     *wire.Conn // set by the read loop, under mu
	cmd      wire.Cmd   // the read loop's command buffer
	maxField int        // above 0: the longest field read whole (GroupConfig.MaxFieldBytes)

	mu     sync.Mutex
	closed bool
	ids    map[string]int64 // CLIENT ID of each connection, by node address ("" for one server)
}

func (r *Redis) newBlockingReader() *blockingReader {
	br := &blockingReader{owner: r, own: true, ids: map[string]int64{}}
	onConnect := func(node string) func(ctx context.Context, cn *redis.Conn) error {
		return func(ctx context.Context, cn *redis.Conn) error {
			if id, err := cn.ClientID(ctx).Result(); err == nil {
				br.mu.Lock()
				br.ids[node] = id
				br.mu.Unlock()
			}
			return nil
		}
	}
	switch c := r.rdb.(type) {
	case *redis.Client:
		if r.failover != nil {
			opt := *r.failover
			opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 1, 0, 1
			opt.Protocol, opt.ReadTimeout = 2, r.readerTimeout(opt.ReadTimeout)
			opt.OnConnect = chainOnConnect(opt.OnConnect, onConnect(""))
			br.UniversalClient = redis.NewFailoverClient(&opt)
			br.dialer = r.sentinels.NewFailoverDialer(opt)
			break
		}
		if c.Options().Addr == "FailoverClient" {
			// A Sentinel client passed in as RedisConfig.Client: its
			// options cannot make another client that follows failovers,
			// so read on its own pool, whose connections it closes when
			// the master changes; reads block at most BlockTime.
			br.UniversalClient, br.own = r.rdb, false
			break
		}
		opt := *c.Options()
		opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 1, 0, 1
		opt.Protocol, opt.ReadTimeout = 2, r.readerTimeout(opt.ReadTimeout)
		userHook := opt.OnConnect
		opt.OnConnect = chainOnConnect(opt.OnConnect, onConnect(""))
		rc := redis.NewClient(&opt)
		br.UniversalClient = rc
		// The raw reader's own connection learns its CLIENT ID as it is
		// set up; only the user's hook, if any, keeps it on go-redis.
		raw := *rc.Options()
		raw.OnConnect = userHook
		br.dialer = wire.NewDialer(raw)
	case *redis.ClusterClient:
		opt := *c.Options()
		opt.PoolSize, opt.MinIdleConns, opt.MaxIdleConns = 1, 0, 1
		opt.Protocol, opt.ReadTimeout = 2, r.readerTimeout(opt.ReadTimeout)
		if opt.OnConnect == nil && opt.StreamingCredentialsProvider == nil {
			// Raw reads on a wire.Conn to the key's master, dialled as the
			// bus's client for that node would be (dialerFor); the bus's
			// client gives the slot map, and is not closed by close.
			br.cluster, br.UniversalClient = c, c
			break
		}
		newNode := opt.NewClient
		opt.NewClient = func(o *redis.Options) *redis.Client {
			o.OnConnect = chainOnConnect(o.OnConnect, onConnect(o.Addr))
			if newNode != nil {
				return newNode(o)
			}
			return redis.NewClient(o)
		}
		cc := redis.NewClusterClient(&opt)
		followTopology(cc)
		br.UniversalClient = cc
	default: // reads block at most BlockTime
		br.UniversalClient, br.own = r.rdb, false
	}
	return br
}

// readerTimeout is a reader connection's read timeout: above the block
// time, since raw reads do not get go-redis's allowance for BLOCK. (A
// reader connection speaks RESP2, which internal/wire parses.)
func (r *Redis) readerTimeout(d time.Duration) time.Duration {
	return max(d, r.cfg.BlockTime+10*time.Second)
}

// readGroup reads up to count entries for consumer: XREADGROUP GROUP
// fnmesh consumer COUNT count [BLOCK block] STREAMS key start. A block
// below 0 does not block. A nil reply is redis.Nil.
func (br *blockingReader) readGroup(ctx context.Context, consumer, key, start string, count int64, block time.Duration) ([]wire.Entry, error) {
	if br.raw() {
		c := &br.cmd
		c.Reset()
		c.Arg("xreadgroup")
		c.Arg("group")
		c.Arg(Group)
		c.Arg(consumer)
		c.ReadTail(count, block, key, start)
		return br.readRaw(ctx, key)
	}
	res, err := br.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: Group, Consumer: consumer, Streams: []string{key, start}, Count: count, Block: block,
	}).Result()
	return fromXStreams(res), err
}

// read reads up to count entries after last: XREAD COUNT count BLOCK
// block STREAMS key last.
func (br *blockingReader) read(ctx context.Context, key, last string, count int64, block time.Duration) ([]wire.Entry, error) {
	if br.raw() {
		c := &br.cmd
		c.Reset()
		c.Arg("xread")
		c.ReadTail(count, block, key, last)
		return br.readRaw(ctx, key)
	}
	res, err := br.XRead(ctx, &redis.XReadArgs{Streams: []string{key, last}, Count: count, Block: block}).Result()
	return fromXStreams(res), err
}

// autoClaim takes over up to count entries of key idle for minIdle
// (XAUTOCLAIM key fnmesh consumer minIdle start COUNT count) and returns
// them with the cursor to start from next time.
func (br *blockingReader) autoClaim(ctx context.Context, consumer, key string, minIdle time.Duration, start string, count int64) ([]wire.Entry, string, error) {
	if !br.raw() {
		msgs, next, err := br.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: key, Group: Group, Consumer: consumer, MinIdle: minIdle, Start: start, Count: count,
		}).Result()
		es := make([]wire.Entry, len(msgs))
		for i, x := range msgs {
			es[i] = wire.FromXMessage(x)
		}
		return es, next, err
	}
	c := &br.cmd
	c.Reset()
	c.Arg("xautoclaim")
	c.Arg(key)
	c.Arg(Group)
	c.Arg(consumer)
	c.ArgInt(minIdle.Milliseconds())
	c.Arg(start)
	c.Arg("count")
	c.ArgInt(count)
	raw, err := br.exchange(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return wire.ParseAutoClaimReply(raw)
}

// raw reports whether reads go on a wire.Conn and parse RESP themselves.
func (br *blockingReader) raw() bool { return br.dialer != nil || br.cluster != nil }

// readRaw runs the stream read in br.cmd on key and parses its reply (wire.ParseStreamReply):
// one buffer per reply, which the entries read from it share.
func (br *blockingReader) readRaw(ctx context.Context, key string) ([]wire.Entry, error) {
	raw, err := br.exchange(ctx, key)
	if err != nil {
		return nil, err
	}
	return wire.ParseStreamReply(raw)
}

// exchange runs the command in br.cmd on the connection to key's node,
// dialled first if there is none, and returns its reply, fields above
// maxField cut short.
func (br *blockingReader) exchange(ctx context.Context, key string) ([]byte, error) {
	if br.wire == nil {
		d, addr, err := br.dialerFor(ctx, key)
		if err != nil {
			return nil, err
		}
		w, err := d.Dial(ctx)
		if err != nil {
			return nil, err
		}
		br.mu.Lock()
		if br.closed {
			br.mu.Unlock()
			w.Close()
			return nil, ErrClosed
		}
		br.wire, br.wireAddr = w, addr
		br.ids[addr] = w.ID() // for CLIENT UNBLOCK
		br.mu.Unlock()
	}
	maxField := wire.MaxBulkLen
	if br.maxField > 0 {
		maxField = br.maxField
	}
	return br.wire.Exchange(br.cmd.Bytes(), maxField)
}

// dialerFor returns how to dial the node that serves key, and its
// address ("" for one server): in a cluster, the address of the last
// MOVED reply, or else the key's master in the slot map, with that node
// client's options (TLS, credentials, timeouts).
func (br *blockingReader) dialerFor(ctx context.Context, key string) (*wire.Dialer, string, error) {
	if br.cluster == nil {
		return br.dialer, "", nil
	}
	node, err := br.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, "", err
	}
	opt := *node.Options()
	opt.ReadTimeout = br.owner.readerTimeout(opt.ReadTimeout)
	if br.movedTo != "" {
		opt.Addr, br.movedTo = br.movedTo, ""
	}
	d := wire.NewDialer(opt)
	if d == nil {
		return nil, "", fmt.Errorf("bus: cannot dial cluster node %s as its client does", opt.Addr)
	}
	return d, opt.Addr, nil
}

func fromXStreams(res []redis.XStream) []wire.Entry {
	var out []wire.Entry
	for _, st := range res {
		for _, x := range st.Messages {
			out = append(out, wire.FromXMessage(x))
		}
	}
	return out
}

// failed drops the reader's connection after a network error (or a
// master that is no longer one, or in a cluster a slot that moved); the
// next read dials a new one. In a cluster the slot map is read again.
func (br *blockingReader) failed(err error) {
	moved := false
	if br.cluster != nil {
		msg := err.Error()
		if addr, ok := strings.CutPrefix(msg, "MOVED "); ok {
			if _, addr, ok = strings.Cut(addr, " "); ok {
				br.movedTo = addr
			}
		}
		// UNBLOCKED: a blocked read on a master that became a replica.
		moved = redirected(err) || strings.HasPrefix(msg, "UNBLOCKED")
	}
	if isRedisError(err) && !lostMaster(err) && !moved {
		return
	}
	if br.cluster != nil && !errors.Is(err, ErrClosed) {
		br.cluster.ReloadState(context.Background())
	}
	if br.wire != nil {
		br.mu.Lock()
		br.wire.Close()
		br.wire = nil
		delete(br.ids, br.wireAddr)
		br.mu.Unlock()
	}
}

func chainOnConnect(a, b func(context.Context, *redis.Conn) error) func(context.Context, *redis.Conn) error {
	if a == nil {
		return b
	}
	return func(ctx context.Context, cn *redis.Conn) error {
		if err := a(ctx, cn); err != nil {
			return err
		}
		return b(ctx, cn)
	}
}

// unblock ends a blocking read in progress on br's connections. In a
// cluster, CLIENT UNBLOCK goes to the node of each connection.
func (br *blockingReader) unblock() {
	if !br.own {
		return
	}
	br.mu.Lock()
	ids := maps.Clone(br.ids)
	br.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if cc, ok := br.owner.rdb.(*redis.ClusterClient); ok {
		cc.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
			if id, ok := ids[node.Options().Addr]; ok {
				node.ClientUnblock(ctx, id)
			}
			return nil
		})
		return
	}
	br.owner.rdb.ClientUnblock(ctx, ids[""])
}

func (br *blockingReader) close() {
	br.mu.Lock()
	br.closed = true
	if br.wire != nil {
		br.wire.Close() // ends a read still in progress
	}
	br.mu.Unlock()
	if br.own && br.cluster == nil {
		br.UniversalClient.Close()
	}
}

// stopReaders stops read loops blocked on readers: cancel their contexts,
// unblock their reads, give them a moment to return (so no connection is
// closed under a reading goroutine), then close the connections, which
// ends any read the unblock missed.
func stopReaders(cancels []context.CancelFunc, readers []*blockingReader, loops *sync.WaitGroup) {
	for _, cancel := range cancels {
		cancel()
	}
	for _, br := range readers {
		br.unblock()
	}
	done := make(chan struct{})
	go func() { loops.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(500 * time.Millisecond):
	}
	for _, br := range readers {
		br.close()
	}
	<-done
}

// Publisher implements Bus.
func (r *Redis) Publisher() message.Publisher { return redisPublisher{r} }

type redisPublisher struct{ r *Redis }

func (p redisPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.r.isClosed() {
		return ErrClosed
	}
	args := &redis.XAddArgs{Stream: topic, Approx: true}
	switch {
	case IsReplyTopic(topic):
		// The reply stream belongs to its caller: if it is gone, so is the
		// caller, and the reply must not recreate the key.
		args.NoMkStream = true
		args.MaxLen = p.r.cfg.ReplyMaxLen
	case strings.HasSuffix(topic, ":dead"):
		args.MaxLen = p.r.cfg.DeadLetterMaxLen
	default:
		args.MaxLen = p.r.cfg.RequestMaxLen
		if isRequestTopic(topic) {
			args.NoMkStream = true // only a replica makes a service's stream
		}
	}
	if len(msgs) == 1 {
		args.Values = entryValues(msgs[0].Metadata, msgs[0].Payload)
		err := p.r.xadd(msgs[0].Context(), args)
		if errors.Is(err, redis.Nil) { // NOMKSTREAM on a missing key
			return noStream(topic)
		}
		return err
	}
	pipe := p.r.rdb.Pipeline()
	for _, m := range msgs {
		a := *args
		a.Values = entryValues(m.Metadata, m.Payload)
		pipe.XAdd(m.Context(), &a)
	}
	_, err := pipe.Exec(msgs[0].Context())
	if errors.Is(err, redis.Nil) {
		return noStream(topic)
	}
	return err
}

// noStream is what an XADD NOMKSTREAM that found no stream means: for a
// reply, its caller is gone (nothing to do); for a request, the service
// is not served.
func noStream(topic string) error {
	if !isRequestTopic(topic) {
		return nil
	}
	return notServed(topic)
}

// notServed is the error of a request whose stream does not exist: no
// replica of its service ever made its group there.
func notServed(topic string) error {
	return fnmesh.Errorf(fnmesh.CodeNotFound, "service %s not found: no replica has ever served it", serviceOfTopic(topic))
}

func (p redisPublisher) Close() error { return nil }

// entryValues lays a message out as stream fields: known fields in
// protocol order, then others sorted, then the payload.
func entryValues(md map[string]string, payload []byte) []any {
	vals := make([]any, 0, 2*len(md)+2)
	seen := 0
	for _, k := range fieldOrder {
		if v, ok := md[k]; ok {
			vals = append(vals, k, v)
			seen++
		}
	}
	if seen < len(md) {
		var extra []string
		for k := range md {
			if !isKnownField(k) && k != FieldPayload {
				extra = append(extra, k)
			}
		}
		sort.Strings(extra)
		for _, k := range extra {
			vals = append(vals, k, md[k])
		}
	}
	if len(payload) > 0 {
		vals = append(vals, FieldPayload, payload)
	}
	return vals
}

func isKnownField(k string) bool {
	for _, f := range fieldOrder {
		if f == k {
			return true
		}
	}
	return false
}

// messageOf turns a stream entry into a message: every field but the
// payload becomes metadata.
func messageOf(e wire.Entry) *message.Message {
	m := message.NewMessage(e.ID, nil)
	e.Each(func(k, v string) bool {
		if k == FieldPayload {
			m.Payload = bytesOf(v)
		} else {
			m.Metadata[k] = v
		}
		return true
	})
	if e.TooLarge != "" {
		// After the entry's fields: a sender's too_large must not hide
		// the reader's.
		m.Metadata[FieldTooLarge] = e.TooLarge
	}
	return m
}

// entryMessage turns a stream entry go-redis parsed into a message.
func entryMessage(x redis.XMessage) *message.Message {
	m := message.NewMessage(x.ID, nil)
	for k, v := range x.Values {
		s, _ := v.(string)
		if k == FieldPayload {
			m.Payload = []byte(s)
			continue
		}
		m.Metadata[k] = s
	}
	return m
}

// DeadLetters implements Bus.
func (r *Redis) DeadLetters(ctx context.Context, service string, count int) ([]DeadLetter, error) {
	if count <= 0 {
		count = 100
	}
	xs, err := r.rdb.XRevRangeN(ctx, DeadLetterTopic(service), "+", "-", int64(count)).Result()
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(xs))
	for i := len(xs) - 1; i >= 0; i-- {
		m := entryMessage(xs[i])
		out = append(out, decodeDeadLetter(xs[i].ID, m.Metadata, m.Payload))
	}
	return out, nil
}

// ensureGroup creates the consumer group of a request stream, and the
// stream, if missing. The group starts at "0": entries added before any
// replica ever ran are requests nobody has seen, and are served.
func (r *Redis) ensureGroup(ctx context.Context, topic string) error {
	err := r.rdb.XGroupCreateMkStream(ctx, topic, Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return err
	}
	return nil
}

// xaddRequest starts c as an XADD NOMKSTREAM of a request for function
// of service: XAdd to FunctionTopic(service, function), without making
// that string.
func xaddRequest(c *wire.Cmd, service, function string, maxLen int64) {
	c.Arg("xadd")
	parts := functionTopicParts(service, function)
	c.ArgConcat(parts[:]...)
	// NOMKSTREAM: only a replica makes a service's stream (with its
	// group); a request for a service nobody serves creates no key.
	c.XAddOptions(true, maxLen)
}

// readBackoff paces a read loop's retries after failed reads: 50 ms,
// doubling up to 2 s, and 50 ms again after a read that worked.
type readBackoff struct{ d time.Duration }

// wait waits out the next pause; false if ctx ended first.
func (b *readBackoff) wait(ctx context.Context) bool {
	if b.d == 0 {
		b.d = 50 * time.Millisecond
	}
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	b.d = min(b.d*2, 2*time.Second)
	return true
}

func (b *readBackoff) reset() { b.d = 0 }

// yieldBatch is the largest batch after which a read loop yields to the
// goroutines it just woke.
const yieldBatch = 2

// lostMaster reports replies of a server that is no longer the master we
// want (after a Sentinel failover): the connection must go, so that the
// next one reaches the new master.
func lostMaster(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "READONLY") || strings.HasPrefix(msg, "LOADING") || strings.HasPrefix(msg, "MASTERDOWN")
}
