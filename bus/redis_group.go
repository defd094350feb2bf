package bus

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	inflight  sync.WaitGroup // delivered, not yet acked or nacked
	mu        sync.Mutex
	readers   []*blockingReader
	cancels   []context.CancelFunc
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
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.readers = append(s.readers, reader)
	s.cancels = append(s.cancels, cancel)
	s.mu.Unlock()
	sub := &groupSubscription{
		s: s, topic: topic, reader: reader,
		out:       make(chan *message.Message),
		freed:     make(chan struct{}, 1),
		redeliver: make(chan redelivery),
	}
	go func() {
		select {
		case <-s.r.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	s.wg.Add(1)
	go sub.run(ctx)
	if s.r.cfg.RequestMaxLen == 0 && s.r.cfg.TrimInterval > 0 {
		s.wg.Add(1)
		go sub.trimLoop(ctx)
	}
	return sub.out, nil
}

// Close stops reading, closes the output channels, then waits up to the
// bus's DrainTimeout for delivered messages to be acked or nacked.
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
	drained := make(chan struct{})
	go func() { s.inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(s.r.cfg.DrainTimeout):
	}
	return nil
}

type groupSubscription struct {
	s         *redisGroupSubscriber
	topic     string
	reader    redis.UniversalClient
	out       chan *message.Message // only run sends on it
	busy      atomic.Int64          // delivered and not acked
	freed     chan struct{}
	redeliver chan redelivery // nacked entries, due again
}

type redelivery struct {
	x     redis.XMessage
	count int
}

func (g *groupSubscription) run(ctx context.Context) {
	defer g.s.wg.Done()
	defer close(g.out)
	conc := int64(g.s.cfg.Concurrency)
	// Own pending entries first: a replica restarted under the same name
	// finishes what it had taken.
	history := true
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if !g.redeliverDue(ctx) {
			return
		}
		free := conc - g.busy.Load()
		if free <= 0 {
			select {
			case <-g.freed:
			case d := <-g.redeliver:
				if !g.send(ctx, d.x, d.count) {
					return
				}
			case <-ctx.Done():
				return
			}
			continue
		}
		if free > g.s.r.cfg.ReadBatch {
			free = g.s.r.cfg.ReadBatch
		}
		start, block := ">", g.s.r.cfg.BlockTime
		if history {
			start, block = "0", -1
		}
		res, err := g.reader.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: Group, Consumer: g.s.cfg.Consumer,
			Streams: []string{g.topic, start}, Count: free, Block: block,
		}).Result()
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				// The stream was deleted or Redis restarted empty.
				g.s.r.ensureGroup(ctx, g.topic)
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			if backoff *= 2; backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
			continue
		}
		backoff = 50 * time.Millisecond
		n := 0
		for _, st := range res {
			for _, x := range st.Messages {
				n++
				if x.Values == nil { // pending entry trimmed away
					g.s.r.acks.ack(g.topic, x.ID)
					continue
				}
				count := 1
				if history {
					count = 2
				}
				g.busy.Add(1)
				g.s.inflight.Add(1)
				if !g.send(ctx, x, count) {
					return
				}
			}
		}
		if history && n < int(free) {
			history = false
		}
	}
}

// redeliverDue sends every nacked entry that is due again.
func (g *groupSubscription) redeliverDue(ctx context.Context) bool {
	for {
		select {
		case d := <-g.redeliver:
			if !g.send(ctx, d.x, d.count) {
				return false
			}
		default:
			return true
		}
	}
}

// send hands one entry, which already holds a slot, to the output channel
// and arranges its ack.
func (g *groupSubscription) send(ctx context.Context, x redis.XMessage, count int) bool {
	m := entryMessage(x)
	m.SetContext(withDelivery(ctx, Delivery{EntryID: x.ID, Count: count}))
	select {
	case g.out <- m:
	case <-ctx.Done():
		// Not delivered: it stays pending for this consumer and is
		// claimed or re-read later.
		g.release()
		return false
	}
	go g.awaitAck(ctx, m, x, count)
	return true
}

func (g *groupSubscription) release() {
	g.busy.Add(-1)
	g.s.inflight.Done()
	select {
	case g.freed <- struct{}{}:
	default:
	}
}

// awaitAck acks the entry when the handler acks the message. A nack queues
// it for delivery again after a pause (the entry stays pending with this
// consumer meanwhile, holding its slot).
func (g *groupSubscription) awaitAck(ctx context.Context, m *message.Message, x redis.XMessage, count int) {
	select {
	case <-m.Acked():
		g.s.r.acks.ack(g.topic, x.ID)
		g.release()
		return
	case <-m.Nacked():
	case <-g.s.r.done:
		g.release()
		return
	}
	select {
	case <-time.After(nackDelay(count)):
	case <-ctx.Done():
		g.release()
		return
	}
	select {
	case g.redeliver <- redelivery{x, count + 1}:
	case <-ctx.Done():
		g.release()
	}
}

func nackDelay(count int) time.Duration {
	d := 100 * time.Millisecond << min(count, 5)
	return d
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
	return rdb.XTrimMinIDApprox(ctx, topic, minID, 0).Err()
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
