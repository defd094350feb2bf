package bus

import (
	"context"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/fnmesh/fnmesh/internal/wire"
)

// RequestSubscriber is implemented by the group subscribers of NewRedis
// and NewMemory. It is a replica's hot path: requests decoded straight
// from their entries, with no watermill message per request. Subscribe
// delivers the same requests as messages, for watermill users.
type RequestSubscriber interface {
	// SubscribeRequests is Subscribe for a consumer of requests: the same
	// group, slots and redeliveries, each request settled once with its
	// Ack or Nack, which settle it at once (as GroupConfig.SettleDirect
	// does for messages).
	SubscribeRequests(ctx context.Context, topic string) (<-chan *DeliveredRequest, error)
}

// DeliveredRequest is one delivery of a request to a member of a
// consumer group. One made by hand, not by a subscription, settles
// nothing, and its Message is its Request's.
type DeliveredRequest struct {
	// Request is the request decoded from its entry. When DecodeErr is
	// set it holds whatever could be read (notably ID and ReplyTo), so
	// that the sender can be answered.
	Request Request
	// DecodeErr, wrapping ErrMalformed, says why the entry is not a
	// request this version runs.
	DecodeErr error
	Delivery  Delivery

	by   requestSettler   // the subscription that delivered it; nil: none
	x    wire.Entry       // the stream entry it was read from (Redis)
	item *memItem         // the queue item it came from (Memory)
	msg  *message.Message // the message it was read from (FromMessage)

	state        atomic.Uint32 // unsettled, acked or nacked
	replySettles atomic.Bool   // its reply settles it (Bus.SendReply)
}

const (
	unsettled uint32 = iota
	acked
	nacked
)

// requestSettler is a group subscription that delivers DeliveredRequests:
// it frees the request's slot once settled, acks its wire.Entry, or delivers
// it again. sent tells that the ack already went out with a reply.
type requestSettler interface {
	settleRequest(r *DeliveredRequest, ok, sent bool)
}

// FromMessage is the DeliveredRequest of a request message from a group
// subscription's Subscribe: decoded from m, settled through m (Ack and
// Nack of this package). It lets a consumer of a Subscriber that does not
// implement RequestSubscriber handle requests the same way.
func FromMessage(m *message.Message) *DeliveredRequest {
	r := &DeliveredRequest{msg: m, Delivery: DeliveryFromContext(m.Context())}
	r.DecodeErr = DecodeRequestInto(m, &r.Request)
	return r
}

// Ack settles r as done: its entry is acknowledged and its slot taken by
// the next request. It reports false if r was nacked. Once a reply
// settles r (Reply.AcksRequest), Ack does nothing.
func (r *DeliveredRequest) Ack() bool {
	if r.msg != nil {
		return Ack(r.msg)
	}
	if r.replySettles.Load() {
		return true
	}
	return r.settle(true, false)
}

// Nack hands r back to be delivered again. It reports false if r was
// acked. Once a reply settles r (Reply.AcksRequest), Nack does nothing.
func (r *DeliveredRequest) Nack() bool {
	if r.msg != nil {
		return Nack(r.msg)
	}
	if r.replySettles.Load() {
		return true
	}
	return r.settle(false, false)
}

func (r *DeliveredRequest) settle(ok, sent bool) bool {
	want := nacked
	if ok {
		want = acked
	}
	if !r.state.CompareAndSwap(unsettled, want) {
		return r.state.Load() == want
	}
	if r.by != nil {
		r.by.settleRequest(r, ok, sent)
	}
	return true
}

// Message returns the entry r was read from as a watermill message:
// every field in Metadata, the arguments in Payload, whether or not it
// decoded. Dead letters are made of it (NewDeadLetterMessage). It is made
// on each call, except for a DeliveredRequest from FromMessage.
func (r *DeliveredRequest) Message() *message.Message {
	switch {
	case r.msg != nil:
		return r.msg
	case r.item != nil:
		return r.item.message()
	case r.x.ID != "":
		return messageOf(r.x)
	}
	return r.Request.Message()
}

// answered is the request a reply settles: a message from Subscribe
// (Reply.Acks) or a DeliveredRequest (Reply.AcksRequest).
type answered struct {
	m *message.Message
	r *DeliveredRequest
}

func answeredBy(rep *Reply) answered {
	if r := rep.AcksRequest; r != nil {
		if r.msg != nil {
			return answered{m: r.msg}
		}
		return answered{r: r}
	}
	return answered{m: rep.Acks}
}

// answeredIn is the request a reply queued with doSettled settles: the
// message, or, for a DeliveredRequest, the one its delivery names.
func answeredIn(m *message.Message, d Delivery) answered {
	if d.request != nil {
		return answered{r: d.request}
	}
	return answered{m: m}
}

// settledByDelivery stands in for the request message doSettled takes
// when the request is a DeliveredRequest, which its Delivery names.
var settledByDelivery = new(message.Message)

func (a answered) none() bool { return a.m == nil && a.r == nil }

func (a answered) delivery() Delivery {
	switch {
	case a.r != nil:
		d := a.r.Delivery
		d.request = a.r
		return d
	case a.m != nil:
		return DeliveryFromContext(a.m.Context())
	}
	return Delivery{}
}

// direct reports whether the request settles at once when told (a
// subscription's SettleDirect, or a DeliveredRequest from one), so that
// its XACK may go out with the reply.
func (a answered) direct(d Delivery) bool {
	if a.r != nil {
		return a.r.by != nil
	}
	return d.settle != nil
}

// settlesByReply marks (or unmarks) that the reply settles the request,
// so that the consumer's Ack or Nack does nothing; false if the request
// cannot be settled so.
func (a answered) settlesByReply(on bool) bool {
	if a.r != nil {
		a.r.replySettles.Store(on)
		return true
	}
	c, ok := contextOf(a.m)
	if ok {
		c.replySettles.Store(on)
	}
	return ok
}

// settle acks or nacks the request as Ack or Nack would.
func (a answered) settle(ok bool) {
	switch {
	case a.r != nil:
		a.r.settle(ok, false)
	case a.m != nil && ok:
		Ack(a.m)
	case a.m != nil:
		settle(a.m, false)
	}
}

// ackSent marks the request acked after its XACK went out with a reply.
func (a answered) ackSent(d Delivery) {
	if a.r != nil {
		a.r.settle(true, true)
		return
	}
	ackSent(a.m, d)
}

func (a answered) message() *message.Message {
	if a.r != nil {
		return a.r.Message()
	}
	return a.m
}
