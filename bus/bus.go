// Package bus carries fnmesh requests and replies between callers and
// replicas. A Bus is a watermill Publisher plus two kinds of Subscriber:
// a consumer-group subscriber (each replica of a service is one member,
// members share the requests) and an inbox subscriber (one caller reads
// the replies addressed to it).
//
// Two transports implement Bus: NewRedis (Redis Streams, durable, many
// processes) and NewMemory (one process, for monoliths and tests). The
// same behaviour suite, bus/bustest, runs against both.
package bus

import (
	"context"
	"errors"
	"fmt"

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
	// message back for another delivery.
	GroupSubscriber(cfg GroupConfig) (message.Subscriber, error)

	// InboxSubscriber returns a Subscriber for reply topics. Subscribe
	// creates the topic and keeps it alive until ctx ends or the
	// subscriber is closed, then removes it. Messages need no ack.
	InboxSubscriber() (message.Subscriber, error)

	// DeadLetters returns up to count of a service's most recent dead
	// letters, oldest first.
	DeadLetters(ctx context.Context, service string, count int) ([]DeadLetter, error)

	// Close releases the bus. Subscribers and publishers from it stop.
	Close() error
}

// GroupConfig configures one member of a consumer group.
type GroupConfig struct {
	// Consumer names the member, unique within its group (a replica id).
	Consumer string
	// Concurrency is the most messages delivered and not yet acked or
	// nacked at once. Default 64.
	Concurrency int
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
	return errors.Join(errs...)
}

// Delivery describes how a group subscriber delivered a message.
type Delivery struct {
	EntryID string // the message's id in its topic (a stream entry id on Redis)
	Count   int    // 1 on first delivery, more on redeliveries
}

type deliveryKey struct{}

// DeliveryFromContext returns the delivery a group subscriber attached to
// a message's context.
func DeliveryFromContext(ctx context.Context) Delivery {
	d, _ := ctx.Value(deliveryKey{}).(Delivery)
	return d
}

func withDelivery(ctx context.Context, d Delivery) context.Context {
	return context.WithValue(ctx, deliveryKey{}, d)
}

// ErrClosed is returned by operations on a closed bus.
var ErrClosed = errors.New("bus: closed")
