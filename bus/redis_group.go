package bus

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
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
	ctx, cancel := context.WithCancel(ctx)
	sub := &groupSubscription{
		s: s, topic: topic, reader: reader,
		out:   make(chan *message.Message),
		freed: make(chan struct{}, 1),
		// Entries in it hold slots, so it never needs more room.
		again:       make(chan delivery, s.cfg.Concurrency),
		watch:       make(chan watched, 2*s.cfg.Concurrency),
		inflight:    map[string]int{},
		historyRead: make(chan struct{}),
	}
	s.mu.Lock()
	s.readers = append(s.readers, reader)
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
	if !s.cfg.SettleDirect {
		for i := 0; i < s.cfg.Concurrency; i++ {
			go sub.watchAcks(ctx)
		}
	}
	s.wg.Add(3)
	go sub.run(ctx)
	go sub.claimLoop(ctx)
	go sub.leaseLoop(ctx)
	if s.r.cfg.RequestMaxLen == 0 && s.r.cfg.TrimInterval > 0 {
		s.wg.Add(1)
		go sub.trimLoop(ctx)
	}
	return sub.out, nil
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
	s      *redisGroupSubscriber
	topic  string
	reader *blockingReader
	out    chan *message.Message // only run sends on it
	freed  chan struct{}         // a slot came free
	again  chan delivery         // nacked or claimed entries to deliver
	watch  chan watched          // delivered messages, for the ack watchers
	// historyRead is closed once run has read this consumer's own pending
	// entries. Claiming waits for it: reading pending entries by id counts
	// as a delivery in Redis, so an entry claimed before that read would
	// be counted twice (and run as its second delivery).
	historyRead chan struct{}

	mu       sync.Mutex
	inflight map[string]int // entry id -> delivery count, for entries holding a slot
}

type delivery struct {
	x     entry
	count int
}

type watched struct {
	m *message.Message
	d delivery
}

// watchAcks settles delivered messages as their handlers ack or nack them.
// It ends when run has ended and every delivered message is settled.
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

func (g *groupSubscription) run(ctx context.Context) {
	defer g.s.wg.Done()
	defer close(g.watch)
	defer close(g.out)
	conc := g.s.cfg.Concurrency
	// Own pending entries first: a replica restarted under the same name
	// finishes what it had taken.
	history := true
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if !g.deliverAgain(ctx) {
			return
		}
		free := conc - g.busy()
		if free <= 0 {
			select {
			case <-g.freed:
			case d := <-g.again:
				if !g.send(ctx, d) {
					return
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		free = min(free, int(g.s.r.cfg.ReadBatch))
		start, block := ">", g.s.r.cfg.BlockTime
		if history {
			start, block = "0", -1
		}
		msgs, err := g.reader.readGroup(ctx, g.s.cfg.Consumer, g.topic, start, int64(free), block)
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			g.reader.failed(err)
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				// The stream was deleted or Redis restarted empty.
				g.s.r.ensureGroup(ctx, g.topic)
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		var counts map[string]int
		if history && len(msgs) > 0 {
			counts = g.deliveryCounts(ctx, entryIDs(msgs))
		}
		for _, x := range msgs {
			if x.gone { // pending entry trimmed away
				g.s.r.comb.ack(g.topic, x.id)
				continue
			}
			count := 1
			if history {
				count = max(counts[x.id], 1)
			}
			if !g.take(x.id, count) {
				continue
			}
			if !g.send(ctx, delivery{x, count}) {
				return
			}
		}
		if history && len(msgs) < free {
			history = false
			close(g.historyRead)
		}
		if len(msgs) > 0 && len(msgs) <= yieldBatch {
			// Let the workers just handed entries run before this loop
			// blocks in its next read: a woken receiver otherwise waits
			// for the sender to block (measured: sequential p50 236us ->
			// 208us, the same as the bare Redis loop). Under load, when
			// reads return batches, the workers run on other threads
			// anyway and the yield costs more than it saves.
			runtime.Gosched()
		}
	}
}

// deliverAgain sends every nacked or claimed entry that is waiting.
func (g *groupSubscription) deliverAgain(ctx context.Context) bool {
	for {
		select {
		case d := <-g.again:
			if !g.send(ctx, d) {
				return false
			}
		default:
			return true
		}
	}
}

// send hands one entry, which already holds a slot, to the output channel
// and arranges its ack.
func (g *groupSubscription) send(ctx context.Context, d delivery) bool {
	m := d.x.message()
	md := Delivery{EntryID: d.x.id, Count: d.count, topic: g.topic}
	direct := g.s.cfg.SettleDirect
	if direct {
		md.settle = func(ok, sent bool) {
			if sent {
				g.release(d.x.id)
				return
			}
			g.settled(ctx, d, ok, true)
		}
	}
	// The message's context outlives the subscription: a closing replica
	// lets running requests finish.
	m.SetContext(withDetachedDelivery(ctx, md))
	select {
	case g.out <- m:
	case <-ctx.Done():
		g.handBack(d.x.id, d.count)
		return false
	}
	if !direct {
		g.watch <- watched{m, d}
	}
	return true
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
		g.release(d.x.id) // stays pending; claimed by another replica later
	}
}

// settled acks an entry whose message was acked, or delivers it again
// after a pause (in a goroutine of its own if async).
func (g *groupSubscription) settled(ctx context.Context, d delivery, ok, async bool) {
	switch {
	case ok:
		g.s.r.comb.ackThen(g.topic, d.x.id, g)
	case async:
		go g.redeliver(ctx, d)
	default:
		g.redeliver(ctx, d)
	}
}

// redeliver delivers a nacked entry again after a pause, or, once the
// subscription is closing, hands it back to the group at once.
func (g *groupSubscription) redeliver(ctx context.Context, d delivery) {
	select {
	case <-time.After(nackDelay(d.count)):
	case <-ctx.Done():
		g.handBack(d.x.id, d.count)
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

// claimLoop takes over entries other replicas left idle for ClaimIdle:
// once at start (a new replica picks up what a dead one left) and then
// every ClaimInterval. It also removes consumers long gone.
func (g *groupSubscription) claimLoop(ctx context.Context) {
	defer g.s.wg.Done()
	cfg := g.s.r.cfg
	cursor := "0-0"
	select {
	case <-g.historyRead:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(cfg.ClaimInterval)
	defer t.Stop()
	lastJanitor := time.Now()
	for {
		cursor = g.claim(ctx, cursor)
		if time.Since(lastJanitor) > cfg.ConsumerExpiry/4 {
			g.removeGoneConsumers(ctx)
			lastJanitor = time.Now()
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (g *groupSubscription) claim(ctx context.Context, cursor string) string {
	free := g.s.cfg.Concurrency - g.busy()
	if free <= 0 {
		return cursor
	}
	msgs, next, err := g.s.r.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: g.topic, Group: Group, Consumer: g.s.cfg.Consumer,
		MinIdle: g.s.r.cfg.ClaimIdle, Start: cursor, Count: int64(free),
	}).Result()
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			g.s.r.ensureGroup(ctx, g.topic)
		}
		return "0-0"
	}
	if len(msgs) == 0 {
		return next
	}
	ids := make([]string, len(msgs))
	for i, x := range msgs {
		ids[i] = x.ID
	}
	counts := g.deliveryCounts(ctx, ids)
	queued := false
	for _, xm := range msgs {
		x := fromXMessage(xm)
		if x.gone {
			g.s.r.comb.ack(g.topic, x.id)
			continue
		}
		count := max(counts[x.id], 1)
		if !g.take(x.id, count) {
			continue
		}
		g.again <- delivery{x, count} // never blocks: it holds a slot
		queued = true
	}
	if queued {
		g.reader.unblock() // the read loop delivers them now, not after its block
	}
	return next
}

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

// leaseLoop keeps the entries this replica runs from looking idle, so no
// other replica claims a slow but live request: every ClaimIdle/3 it
// claims them to itself again (XCLAIM JUSTID resets the idle time and
// not the delivery count). Entries another replica claimed meanwhile
// (after a stall longer than ClaimIdle) are left to it.
func (g *groupSubscription) leaseLoop(ctx context.Context) {
	defer g.s.wg.Done()
	t := time.NewTicker(g.s.r.cfg.ClaimIdle / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			g.renewLeases(ctx)
		case <-ctx.Done():
			return
		}
	}
}

func (g *groupSubscription) renewLeases(ctx context.Context) {
	g.mu.Lock()
	ids := make([]string, 0, len(g.inflight))
	for id := range g.inflight {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	owned := g.deliveryCounts(ctx, ids) // only entries still ours
	mine := make([]string, 0, len(owned))
	for _, id := range ids {
		if _, ok := owned[id]; ok {
			mine = append(mine, id)
		}
	}
	for len(mine) > 0 {
		n := min(len(mine), 200)
		g.s.r.rdb.XClaimJustID(ctx, &redis.XClaimArgs{
			Stream: g.topic, Group: Group, Consumer: g.s.cfg.Consumer, MinIdle: 0, Messages: mine[:n],
		})
		mine = mine[n:]
	}
}

// removeGoneConsumers deletes group members with nothing pending that
// have not read for ConsumerExpiry: replicas that stopped for good. A
// live replica reappears with its next read.
func (g *groupSubscription) removeGoneConsumers(ctx context.Context) {
	cs, err := g.s.r.rdb.XInfoConsumers(ctx, g.topic, Group).Result()
	if err != nil {
		return
	}
	for _, c := range cs {
		if c.Pending == 0 && c.Idle > g.s.r.cfg.ConsumerExpiry && c.Name != g.s.cfg.Consumer {
			g.s.r.rdb.XGroupDelConsumer(ctx, g.topic, Group, c.Name)
		}
	}
}

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

func entryIDs(es []entry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.id
	}
	return ids
}
