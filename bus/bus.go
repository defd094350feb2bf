// Package bus carries fnmesh requests and replies between callers and
// replicas. A Bus is a watermill Publisher plus two kinds of Subscriber:
// a consumer-group subscriber (each replica of a service is one member,
// members share the requests) and an inbox subscriber (one caller reads
// the replies addressed to it).
//
// Two transports implement Bus: NewRedis (Redis Streams, durable, many
// processes) and NewMemory (one process, for monoliths and tests). The
// same behaviour suite, package meshtest, runs against both.
package bus

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Bus is a transport for fnmesh.
type Bus interface {
	// Publisher stores messages on topics. Publish returns once every
	// message is stored (on Redis: the XADD was acknowledged) and honours
	// each message's Context for cancellation. Publishing to a reply topic
	// whose owner is gone drops the message without error.
	Publisher() message.Publisher

	// GroupSubscriber returns a Subscriber that joins the consumer group of
	// the topics it subscribes to as one member. Members of one group share
	// the topic's messages; each message goes to one member at a time, up
	// to Concurrency unacknowledged messages per member. Nack hands the
	// message back for another delivery. The subscribers of NewRedis and
	// NewMemory also deliver the requests without messages
	// (RequestSubscriber), as replicas take them.
	GroupSubscriber(cfg GroupConfig) (message.Subscriber, error)

	// SendRequest stores one request on a service's request topic and,
	// like Publish, returns once it is stored (or, with r.Failed set, once
	// it is on its way: see Request.Failed). It is the hot path of every
	// call: it writes the fields without building a message.
	SendRequest(ctx context.Context, service string, r *Request) error

	// SendReply answers a call on its caller's inbox. A reply to an inbox
	// that is gone (its caller stopped) is dropped without error. Unlike
	// SendRequest, it may finish its round trip after ctx ends: a replica
	// writes its replies itself when no other write is in flight. With
	// r.Acks set, a successful SendReply also acks that request, as Ack
	// would (on Redis, in the same round trip, after the reply). When
	// r.Acks came from a subscription with GroupConfig.SettleDirect, the
	// reply may instead settle the request itself, after SendReply
	// returned: acked once the reply is written, nacked (delivered again)
	// if that fails. Ack and Nack of that message then do nothing: the
	// consumer goes on to its next message without waiting for the write.
	SendReply(ctx context.Context, inbox string, r *Reply) error

	// OpenInbox creates the reply topic and calls deliver for each reply
	// on it until the inbox is closed or ctx ends, then removes the topic.
	// deliver may be called from several goroutines at once and must not
	// block.
	OpenInbox(ctx context.Context, topic string, deliver func(*Reply)) (Inbox, error)

	// DeadLetters returns up to count of a service's most recent dead
	// letters, oldest first.
	DeadLetters(ctx context.Context, service string, count int) ([]DeadLetter, error)

	// ReplayDeadLetters sends the given dead letters of a service (all of
	// them when ids is empty) again as new requests, without reply stream
	// or deadline, and removes them from the dead letters. It returns how
	// many it replayed.
	ReplayDeadLetters(ctx context.Context, service string, ids ...string) (int, error)

	// PurgeDeadLetters removes the given dead letters (all when ids is
	// empty) and returns how many it removed.
	PurgeDeadLetters(ctx context.Context, service string, ids ...string) (int, error)

	// Backlog reports a service's queue: requests not yet taken by a
	// replica, requests taken and not finished, and the bound its replicas
	// published (0: none).
	Backlog(ctx context.Context, service string) (Backlog, error)

	// SetLimits publishes a service's bounds for its callers.
	SetLimits(ctx context.Context, service string, l Limits) error

	// Idempotency returns the store that keeps idempotency keys.
	Idempotency() IdempotencyStore

	// Close releases the bus. Subscribers and publishers from it stop.
	Close() error
}

// Inbox is an open reply topic.
type Inbox interface {
	// Close stops delivering and removes the topic.
	Close() error
}

// GroupConfig configures one member of a consumer group.
type GroupConfig struct {
	// Consumer names the member, unique within its group (a replica id).
	Consumer string
	// Concurrency is the most messages delivered and not yet acked or
	// nacked at once. Default 64.
	Concurrency int
	// SettleDirect promises that the consumer settles every message it
	// receives with Ack or Nack of this package (which also call m.Ack or
	// m.Nack), once. The subscriber then settles a message within that
	// call, instead of keeping a goroutine waiting on m.Acked and
	// m.Nacked: a goroutine hand-off less per request. Consumers that
	// only call m.Ack and m.Nack (a watermill Router) leave it false.
	SettleDirect bool
	// MaxFieldBytes, when above 0, bounds each field of an entry read:
	// a larger one is not read into memory (on Redis its bytes are
	// skipped as they arrive); the message keeps its first
	// TooLargePrefix bytes, and FieldTooLarge names it (DecodeRequest
	// then fails). A replica sets it to its largest payload.
	MaxFieldBytes int
}

func (c *GroupConfig) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
}

// Validate reports every problem with c.
func (c GroupConfig) Validate() error {
	var errs []error
	if c.Consumer == "" {
		errs = append(errs, errors.New("bus: GroupConfig.Consumer is empty"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("bus: GroupConfig.Concurrency is %d, want at least 1", c.Concurrency))
	}
	if c.MaxFieldBytes < 0 {
		errs = append(errs, fmt.Errorf("bus: GroupConfig.MaxFieldBytes is %d, want 0 or more", c.MaxFieldBytes))
	}
	return errors.Join(errs...)
}

// Delivery describes how a group subscriber delivered a message.
type Delivery struct {
	EntryID string // the message's id in its topic (a stream entry id on Redis)
	Count   int    // 1 on first delivery, more on redeliveries

	// settle is set by subscriptions with GroupConfig.SettleDirect; sent
	// tells that the ack was already sent (with a reply).
	settle func(ok, sent bool)
	topic  string // the stream the entry is on (Redis)
	// request is the DeliveredRequest a reply settles, while the reply is
	// on its way (doSettled); nil for messages.
	request *DeliveredRequest
}

// Ack acks m, a message from a group subscription, as m.Ack does; on a
// subscription with GroupConfig.SettleDirect it also settles the entry at
// once. It reports false if m was nacked.
func Ack(m *message.Message) bool {
	if replySettles(m) {
		return true
	}
	return settle(m, true)
}

// Nack nacks m, as m.Nack does, settling it at once on a subscription
// with GroupConfig.SettleDirect: it is delivered again. It reports false
// if m was acked.
func Nack(m *message.Message) bool {
	if replySettles(m) {
		return true
	}
	return settle(m, false)
}

// replySettles reports whether m's reply settles it (Bus.SendReply).
func replySettles(m *message.Message) bool {
	c, ok := contextOf(m)
	return ok && c.replySettles.Load()
}

// contextOf returns the context a Redis group subscription gave m, if m
// (which may be nil) is such a message.
func contextOf(m *message.Message) (*detachedDeliveryContext, bool) {
	if m == nil {
		return nil, false
	}
	c, ok := m.Context().(*detachedDeliveryContext)
	return c, ok
}

func settle(m *message.Message, ok bool) bool {
	select {
	case <-m.Acked():
		return ok // settled before: nothing more to do
	case <-m.Nacked():
		return !ok
	default:
	}
	if ok && !m.Ack() || !ok && !m.Nack() {
		return false
	}
	if d := DeliveryFromContext(m.Context()); d.settle != nil {
		d.settle(ok, false)
	}
	return true
}

// ackSent marks m acked after its XACK went out with a reply.
func ackSent(m *message.Message, d Delivery) {
	if m.Ack() {
		d.settle(true, true)
	}
}

type deliveryKey struct{}

// DeliveryFromContext returns the delivery a group subscriber attached to
// a message's context.
func DeliveryFromContext(ctx context.Context) Delivery {
	switch c := ctx.(type) {
	case *deliveryContext:
		return c.d
	case *detachedDeliveryContext:
		return c.d
	}
	d, _ := ctx.Value(deliveryKey{}).(Delivery)
	return d
}

// deliveryContext carries a Delivery, as context.WithValue would, in one
// allocation and without boxing it again on each lookup: a request's
// delivery is looked up several times on its way.
type deliveryContext struct {
	context.Context
	d Delivery
}

func (c *deliveryContext) Value(key any) any {
	if key == (deliveryKey{}) {
		return c.d
	}
	return c.Context.Value(key)
}

func withDelivery(ctx context.Context, d Delivery) context.Context {
	return &deliveryContext{ctx, d}
}

// detachedDeliveryContext is a deliveryContext that, like
// context.WithoutCancel, keeps its parent's values but not its
// cancellation or deadline. A Redis group subscription gives it to the
// messages it delivers.
type detachedDeliveryContext struct {
	deliveryContext
	replySettles atomic.Bool // the message's reply settles it, see SendReply
}

func (*detachedDeliveryContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (*detachedDeliveryContext) Done() <-chan struct{}       { return nil }
func (*detachedDeliveryContext) Err() error                  { return nil }

// withDetachedDelivery is withDelivery(context.WithoutCancel(ctx), d).
func withDetachedDelivery(ctx context.Context, d Delivery) context.Context {
	return &detachedDeliveryContext{deliveryContext: deliveryContext{ctx, d}}
}

// ErrClosed is returned by operations on a closed bus.
var ErrClosed = errors.New("bus: closed")

// Backlog is the state of a service's request queue.
type Backlog struct {
	Waiting    int64 // added, not yet taken by any replica
	Pending    int64 // taken by a replica, not yet acknowledged
	MaxBacklog int64 // published bound on Waiting; 0: none
}

// Limits are the bounds a service publishes for its callers.
type Limits struct {
	// MaxBacklog is the most requests that may wait for a replica; past
	// it, callers get resource_exhausted instead of adding more.
	MaxBacklog int64
}

// IdemState says what an idempotency key holds.
type IdemState int

const (
	IdemNew     IdemState = iota // the caller now owns the key: run it
	IdemMine                     // held by the same entry (a redelivery): run it
	IdemRunning                  // held by another request, not finished
	IdemDone                     // finished; Result holds its outcome
)

// IdempotencyStore records which idempotency keys of a service are being
// run or were run, for a window. Owner is the id of the request wire.Entry
// running the key, so that a redelivery of the same entry is told apart
// from a second request with the same key.
type IdempotencyStore interface {
	// Begin claims key for owner unless it is held. It returns the state
	// and, for IdemDone, the stored result.
	Begin(ctx context.Context, service, key, owner string, ttl time.Duration) (IdemState, []byte, error)
	// Complete records that owner finished key with result.
	Complete(ctx context.Context, service, key, owner string, result []byte, ttl time.Duration) error
	// Release frees key if owner holds it, so a later request may run.
	Release(ctx context.Context, service, key, owner string) error
}

// IdempotencyTopic is the key holding one idempotency key of a service.
func IdempotencyTopic(service, key string) string { return "fnmesh:{" + service + "}:idem:" + key }

// LimitsTopic is the hash holding a service's published limits.
func LimitsTopic(service string) string { return "fnmesh:{" + service + "}:limits" }
