package bus

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/fnmesh/fnmesh/internal/wire"
	"github.com/redis/go-redis/v9"
)

// GroupSubscriber implements Bus.
//
// Unlike watermill-redisstream's subscriber, which reads COUNT 1 and waits
// for each ack before reading on (one message in flight), this one keeps
// up to Concurrency messages in flight: each XREADGROUP asks for as many
// entries as there are free slots, and acks go out in batches.
//
// Entries survive their replica: a live replica renews the lease on the
// entries it runs (XCLAIM to itself, every ClaimIdle/3), and every replica
// takes over entries idle longer than ClaimIdle (XAUTOCLAIM), which only
// happens to entries whose replica died or stalled. A closing subscriber
// hands back what it took and did not finish at once, by marking those
// entries idle, so the next claim of another replica takes them.
func (r *Redis) GroupSubscriber(cfg GroupConfig) (message.Subscriber, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &redisGroupSubscriber{r: r, cfg: cfg, closing: make(chan struct{})}
	r.track(s)
	return s, nil
}

type redisGroupSubscriber struct {
	r         *Redis
	cfg       GroupConfig
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // subscription loops
	mu        sync.Mutex
	readers   []*blockingReader
	cancels   []context.CancelFunc
	subs      []*groupSubscription
}

func (s *redisGroupSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	sub, err := s.subscribe(ctx, topic, false)
	if err != nil {
		return nil, err
	}
	return sub.out, nil
}

// SubscribeRequests implements RequestSubscriber.
func (s *redisGroupSubscriber) SubscribeRequests(ctx context.Context, topic string) (<-chan *DeliveredRequest, error) {
	sub, err := s.subscribe(ctx, topic, true)
	if err != nil {
		return nil, err
	}
	return sub.requests, nil
}

// subscribe starts a subscription to topic that delivers messages, or
// DeliveredRequests if requests.
func (s *redisGroupSubscriber) subscribe(ctx context.Context, topic string, requests bool) (*groupSubscription, error) {
	select {
	case <-s.closing:
		return nil, ErrClosed
	default:
	}
	if s.r.isClosed() {
		return nil, ErrClosed
	}
	if err := s.r.ensureGroup(ctx, topic); err != nil {
		return nil, err
	}
	reader := s.r.newBlockingReader()
	reader.maxField = s.cfg.MaxFieldBytes
	// XAUTOCLAIM on a connection of its own, as bounded as the readers':
	// theirs are held by their blocking reads.
	claimer := s.r.newBlockingReader()
	claimer.maxField = s.cfg.MaxFieldBytes
	ctx, cancel := context.WithCancel(ctx)
	sub := &groupSubscription{
		s: s, topic: topic, reader: reader, claimer: claimer, ctx: ctx,
		freed: make(chan struct{}, 1),
		// Entries in it hold slots, so it never needs more room.
		again:       make(chan delivery, s.cfg.Concurrency),
		watch:       make(chan watched, 2*s.cfg.Concurrency),
		inflight:    map[string]int{},
		historyRead: make(chan struct{}),
	}
	if requests {
		sub.requests = make(chan *DeliveredRequest)
	} else {
		sub.out = make(chan *message.Message)
	}
	s.mu.Lock()
	s.readers = append(s.readers, reader, claimer)
	s.cancels = append(s.cancels, cancel)
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	go func() {
		select {
		case <-s.r.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	// Unless the consumer settles directly, one watcher per slot waits for
	// each delivered message's ack: no goroutine per message.
	if !s.cfg.SettleDirect && !requests {
		for i := 0; i < s.cfg.Concurrency; i++ {
			go sub.watchAcks(ctx)
		}
	}
	// The background loops of a replica, one file each:
	// redis_group_read.go, redis_group_claim.go, redis_group_lease.go and
	// redis_group_trim.go.
	s.wg.Add(3)
	go sub.readLoop(ctx)
	go sub.claimLoop(ctx)
	go sub.leaseLoop(ctx)
	if s.r.cfg.RequestMaxLen == 0 && s.r.cfg.TrimInterval > 0 {
		s.wg.Add(1)
		go sub.trimLoop(ctx)
	}
	return sub, nil
}

// Close stops reading and closes the output channels. Messages already
// delivered keep running: their acks still go out, and a nack hands the
// entry back to the group at once. (The service's router waits for its
// handlers; Redis.Close waits for the last acks.)
func (s *redisGroupSubscriber) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		cancels, readers := s.cancels, s.readers
		s.mu.Unlock()
		stopReaders(cancels, readers, &s.wg)
		s.r.untrack(s)
	})
	s.wg.Wait()
	return nil
}

type groupSubscription struct {
	s       *redisGroupSubscriber
	topic   string
	reader  *blockingReader
	claimer *blockingReader // the claim loop's
	ctx     context.Context // the subscription's: ends when it closes
	// One of out and requests is the output; only readLoop sends on it.
	out      chan *message.Message
	requests chan *DeliveredRequest
	freed    chan struct{} // a slot came free
	again    chan delivery // nacked or claimed entries to deliver
	watch    chan watched  // delivered messages, for the ack watchers
	// historyRead is closed once readLoop has read this consumer's own pending
	// entries. Claiming waits for it: reading pending entries by id counts
	// as a delivery in Redis, so an entry claimed before that read would
	// be counted twice (and run as its second delivery).
	historyRead chan struct{}

	mu       sync.Mutex
	inflight map[string]int // entry id -> delivery count, for entries holding a slot
}

type delivery struct {
	x     wire.Entry
	count int
}

type watched struct {
	m *message.Message
	d delivery
}

// watchAcks settles delivered messages as their handlers ack or nack them.
// It ends when readLoop has ended and every delivered message is settled.
func (g *groupSubscription) watchAcks(ctx context.Context) {
	for w := range g.watch {
		g.awaitAck(ctx, w.m, w.d)
	}
}

func (g *groupSubscription) busy() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.inflight)
}

// take reserves a slot for an entry; false if it already holds one (a
// claim of an entry this replica runs).
func (g *groupSubscription) take(id string, count int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.inflight[id]; ok {
		return false
	}
	g.inflight[id] = count
	g.s.r.inflight.Add(1)
	return true
}

func (g *groupSubscription) release(id string) {
	g.mu.Lock()
	if _, ok := g.inflight[id]; ok {
		delete(g.inflight, id)
		g.s.r.inflight.Done()
	}
	g.mu.Unlock()
	select {
	case g.freed <- struct{}{}:
	default:
	}
}

// awaitAck acks the entry when the handler acks the message. A nack
// delivers it again after a pause, or, once the subscription is closing,
// hands it back to the group at once.
func (g *groupSubscription) awaitAck(ctx context.Context, m *message.Message, d delivery) {
	select {
	case <-m.Acked():
		g.settled(ctx, d, true, false)
	case <-m.Nacked():
		g.settled(ctx, d, false, false)
	case <-g.s.r.done:
		g.release(d.x.ID) // stays pending; claimed by another replica later
	}
}

// settled acks an entry whose message was acked, or delivers it again
// after a pause (in a goroutine of its own if async).
func (g *groupSubscription) settled(ctx context.Context, d delivery, ok, async bool) {
	switch {
	case ok:
		g.s.r.comb.ackThen(g.topic, d.x.ID, g)
	case async:
		go g.redeliver(ctx, d)
	default:
		g.redeliver(ctx, d)
	}
}

// settleRequest implements requestSettler: as a message's settle does,
// in a goroutine of its own if it is delivered again.
func (g *groupSubscription) settleRequest(r *DeliveredRequest, ok, sent bool) {
	if sent {
		g.release(r.x.ID)
		return
	}
	g.settled(g.ctx, delivery{r.x, r.Delivery.Count}, ok, true)
}

// redeliver delivers a nacked entry again after a pause, or, once the
// subscription is closing, hands it back to the group at once.
func (g *groupSubscription) redeliver(ctx context.Context, d delivery) {
	select {
	case <-time.After(nackDelay(d.count)):
	case <-ctx.Done():
		g.handBack(d.x.ID, d.count)
		return
	}
	d.count++
	g.again <- d // never blocks: d holds one of the slots it has room for
	g.reader.unblock()
}

func nackDelay(count int) time.Duration {
	return 100 * time.Millisecond << min(count, 5)
}

// handBack makes an entry this replica holds but will not finish
// claimable by any other replica now: it stays pending under our name but
// looks idle for a day, so the next XAUTOCLAIM elsewhere takes it. Its
// delivery count is set back, so a graceful hand-back does not count as a
// failed delivery.
func (g *groupSubscription) handBack(id string, count int) {
	defer g.release(id)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g.s.r.rdb.Do(ctx, "XCLAIM", g.topic, Group, g.s.cfg.Consumer, 0, id,
		"IDLE", handBackIdle.Milliseconds(), "RETRYCOUNT", max(count-1, 0), "JUSTID")
}

// handBackIdle is the idle time a handed-back entry shows; any ClaimIdle
// shorter than it lets other replicas take the entry at their next claim.
const handBackIdle = 24 * time.Hour

// deliveryCounts asks Redis how often each entry (held by this consumer)
// was delivered.
func (g *groupSubscription) deliveryCounts(ctx context.Context, ids []string) map[string]int {
	lo, hi := ids[0], ids[0]
	for _, id := range ids {
		if compareIDs(id, lo) < 0 {
			lo = id
		}
		if compareIDs(id, hi) > 0 {
			hi = id
		}
	}
	ps, err := g.s.r.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: g.topic, Group: Group, Start: lo, End: hi, Count: int64(len(ids)) + 100, Consumer: g.s.cfg.Consumer,
	}).Result()
	counts := make(map[string]int, len(ps))
	if err == nil {
		for _, p := range ps {
			counts[p.ID] = int(p.RetryCount)
		}
	}
	return counts
}

func parseID(id string) (ms, seq uint64) {
	a, b, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(a, 10, 64)
	seq, _ = strconv.ParseUint(b, 10, 64)
	return
}

func compareIDs(a, b string) int {
	am, as := parseID(a)
	bm, bs := parseID(b)
	switch {
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

func nextID(id string) string {
	ms, seq := parseID(id)
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq+1, 10)
}

func entryIDs(es []wire.Entry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.ID
	}
	return ids
}
