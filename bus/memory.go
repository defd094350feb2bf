package bus

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Memory is the in-process Bus: the same semantics as Redis (consumer
// groups shared by replicas, concurrency per member, nack redelivers,
// reply inboxes that vanish with their owner, dead letters) without a
// server. Nothing survives the process.
type Memory struct {
	mu      sync.Mutex
	queues  map[string]*memQueue
	inboxes map[string]func(*Reply)
	dead    map[string][]DeadLetter
	limits  map[string]Limits
	idem    *memIdem
	seq     atomic.Uint64
	done    chan struct{}
	closed  bool
}

var _ Bus = (*Memory)(nil)

// deadLetterCap bounds the dead letters Memory keeps per service.
const deadLetterCap = 10000

// NewMemory returns an empty in-memory bus.
func NewMemory() *Memory {
	return &Memory{
		queues:  map[string]*memQueue{},
		inboxes: map[string]func(*Reply){},
		dead:    map[string][]DeadLetter{},
		limits:  map[string]Limits{},
		idem:    &memIdem{keys: map[string]memIdemKey{}},
		done:    make(chan struct{}),
	}
}

// Publisher implements Bus.
func (b *Memory) Publisher() message.Publisher { return memPublisher{b} }

// GroupSubscriber implements Bus.
func (b *Memory) GroupSubscriber(cfg GroupConfig) (message.Subscriber, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &memGroupSubscriber{bus: b, cfg: cfg, closing: make(chan struct{})}, nil
}

// OpenInbox implements Bus.
func (b *Memory) OpenInbox(ctx context.Context, topic string, deliver func(*Reply)) (Inbox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	b.inboxes[topic] = deliver
	in := &memInbox{b: b, topic: topic}
	in.stop = context.AfterFunc(ctx, func() { in.Close() })
	return in, nil
}

type memInbox struct {
	b     *Memory
	topic string
	stop  func() bool
}

func (in *memInbox) Close() error {
	in.stop()
	in.b.mu.Lock()
	delete(in.b.inboxes, in.topic)
	in.b.mu.Unlock()
	return nil
}

// SendRequest implements Bus.
func (b *Memory) SendRequest(ctx context.Context, service string, r *Request) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	it := &memItem{req: *r, id: b.nextID()}
	it.req.Value, it.req.Failed = nil, nil // neither goes on the wire
	b.queue(FunctionTopic(service, r.Function)).push(it)
	return nil
}

// SendReply implements Bus. The caller's deliver runs on the replica's
// goroutine: it only hands the reply to the waiting call.
func (b *Memory) SendReply(_ context.Context, inbox string, r *Reply) error {
	b.mu.Lock()
	deliver, closed := b.inboxes[inbox], b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if deliver != nil { // else the caller is gone: dropped, as on Redis
		deliver(r)
	}
	if req := answeredBy(r); !req.none() {
		req.settle(true)
	}
	return nil
}

// DeadLetters implements Bus.
func (b *Memory) DeadLetters(_ context.Context, service string, count int) ([]DeadLetter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	all := b.dead[DeadLetterTopic(service)]
	if count > 0 && len(all) > count {
		all = all[len(all)-count:]
	}
	return append([]DeadLetter(nil), all...), nil
}

// Close implements Bus.
func (b *Memory) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
	return nil
}

func (b *Memory) queue(topic string) *memQueue {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[topic]
	if q == nil {
		q = newMemQueue(b.done)
		b.queues[topic] = q
	}
	return q
}

// nextID returns an entry id shaped like Redis's: milliseconds-sequence.
func (b *Memory) nextID() string {
	var buf [48]byte // one allocation: the string
	id := strconv.AppendInt(buf[:0], time.Now().UnixMilli(), 10)
	id = append(id, '-')
	return string(strconv.AppendUint(id, b.seq.Add(1), 10))
}

type memPublisher struct{ b *Memory }

func (p memPublisher) Publish(topic string, msgs ...*message.Message) error {
	b := p.b
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	switch {
	case IsReplyTopic(topic):
		for _, m := range msgs {
			rep, err := DecodeReply(m)
			if err != nil {
				continue // a reader would drop it too
			}
			b.SendReply(m.Context(), topic, rep)
		}
	case strings.HasSuffix(topic, ":dead"):
		b.mu.Lock()
		for _, m := range msgs {
			d := decodeDeadLetter(b.nextID(), m.Metadata, m.Payload)
			list := append(b.dead[topic], d)
			if len(list) > deadLetterCap {
				list = list[len(list)-deadLetterCap:]
			}
			b.dead[topic] = list
		}
		b.mu.Unlock()
	default:
		q := b.queue(topic)
		for _, m := range msgs {
			// Stored as given: every delivery hands out a copy of it (fresh
			// ack channels), never the message itself.
			q.push(&memItem{msg: m, id: b.nextID()})
		}
	}
	return nil
}

func (p memPublisher) Close() error { return nil }

// memItem is one entry on a queue and how often it was delivered: a
// message a Publisher stored, or else a request as SendRequest was given
// it, decoded straight from it for SubscribeRequests.
type memItem struct {
	msg   *message.Message
	req   Request
	id    string
	count int
}

// message returns a copy of the item as a message: every delivery gets
// fresh ack channels, never the stored message itself.
func (it *memItem) message() *message.Message {
	if it.msg != nil {
		return it.msg.Copy()
	}
	return it.req.Message()
}

// decode decodes the item's request into r.
func (it *memItem) decode(r *Request) error {
	if it.msg != nil {
		return DecodeRequestInto(it.msg, r)
	}
	return decodeSentRequest(&it.req, r)
}

// memQueue is an unbounded FIFO whose items are handed out on one
// channel, so the members reading it compete for items.
type memQueue struct {
	taken atomic.Int64 // delivered and not yet acked or nacked
	mu    sync.Mutex
	items []*memItem
	wake  chan struct{}
	out   chan *memItem
}

func newMemQueue(done <-chan struct{}) *memQueue {
	q := &memQueue{wake: make(chan struct{}, 1), out: make(chan *memItem)}
	go q.pump(done)
	return q
}

func (q *memQueue) push(it *memItem) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.signal()
}

// pushFront returns a nacked item to the head of the queue.
func (q *memQueue) pushFront(it *memItem) {
	q.mu.Lock()
	q.items = append([]*memItem{it}, q.items...)
	q.mu.Unlock()
	q.signal()
}

func (q *memQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *memQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *memQueue) pump(done <-chan struct{}) {
	for {
		q.mu.Lock()
		var head *memItem
		if len(q.items) > 0 {
			head = q.items[0]
		}
		q.mu.Unlock()
		if head == nil {
			select {
			case <-q.wake:
				continue
			case <-done:
				return
			}
		}
		select {
		case q.out <- head:
			// A nack may have put items in front of head meanwhile:
			// remove head itself, not whatever is first now.
			q.mu.Lock()
			if q.items[0] == head {
				q.items[0] = nil
				q.items = q.items[1:]
				q.mu.Unlock()
				continue
			}
			for i, it := range q.items {
				if it == head {
					copy(q.items[i:], q.items[i+1:])
					q.items[len(q.items)-1] = nil
					q.items = q.items[:len(q.items)-1]
					break
				}
			}
			q.mu.Unlock()
		case <-q.wake: // a nack may have put an item in front of head
		case <-done:
			return
		}
	}
}

type memGroupSubscriber struct {
	bus       *Memory
	cfg       GroupConfig
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

func (s *memGroupSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	err := s.serve(ctx, topic, func() { close(out) }, func(it *memItem, slot *memSlot) bool {
		m := it.message()
		d := Delivery{EntryID: it.id, Count: it.count}
		settle := func(ok, _ bool) { slot.settleItem(it, ok) }
		if s.cfg.SettleDirect {
			d.settle = settle
		}
		m.SetContext(withDelivery(ctx, d))
		select {
		case out <- m:
		case <-ctx.Done():
			return false
		case <-s.closing:
			return false
		}
		if !s.cfg.SettleDirect {
			go func() {
				select {
				case <-m.Acked():
					settle(true, false)
				case <-m.Nacked():
					settle(false, false)
				case <-s.bus.done:
					settle(true, false) // the bus is gone: only the slot matters
				}
			}()
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SubscribeRequests implements RequestSubscriber.
func (s *memGroupSubscriber) SubscribeRequests(ctx context.Context, topic string) (<-chan *DeliveredRequest, error) {
	out := make(chan *DeliveredRequest)
	err := s.serve(ctx, topic, func() { close(out) }, func(it *memItem, slot *memSlot) bool {
		r := &DeliveredRequest{by: slot, item: it, Delivery: Delivery{EntryID: it.id, Count: it.count}}
		r.DecodeErr = it.decode(&r.Request)
		select {
		case out <- r:
			return true
		case <-ctx.Done():
		case <-s.closing:
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// serve hands the items of topic's queue, one per free slot of
// Concurrency, to deliver, which reports false if it did not deliver the
// item (the subscription is ending); done runs when serving ends.
func (s *memGroupSubscriber) serve(ctx context.Context, topic string, done func(), deliver func(*memItem, *memSlot) bool) error {
	select {
	case <-s.closing:
		return ErrClosed
	case <-s.bus.done:
		return ErrClosed
	default:
	}
	q := s.bus.queue(topic)
	slot := &memSlot{q: q, slots: make(chan struct{}, s.cfg.Concurrency)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer done()
		for {
			select {
			case slot.slots <- struct{}{}:
			case <-ctx.Done():
				return
			case <-s.closing:
				return
			case <-s.bus.done:
				return
			}
			var it *memItem
			select {
			case it = <-q.out:
			case <-ctx.Done():
				return
			case <-s.closing:
				return
			case <-s.bus.done:
				return
			}
			it.count++
			q.taken.Add(1)
			if !deliver(it, slot) {
				q.taken.Add(-1)
				q.pushFront(it)
				return
			}
		}
	}()
	return nil
}

// memSlot is a subscription's slots on its queue.
type memSlot struct {
	q     *memQueue
	slots chan struct{} // one element per delivered, unsettled item
}

// settleItem frees it's slot; a nacked item goes back first in line.
func (m *memSlot) settleItem(it *memItem, ok bool) {
	if !ok {
		m.q.pushFront(it)
	}
	m.q.taken.Add(-1)
	<-m.slots
}

// settleRequest implements requestSettler.
func (m *memSlot) settleRequest(r *DeliveredRequest, ok, _ bool) { m.settleItem(r.item, ok) }

func (s *memGroupSubscriber) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}
