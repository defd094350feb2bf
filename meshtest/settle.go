package meshtest

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh/bus"
)

// testGroupSubscriberSettles drives a group subscription as a plain
// watermill consumer would (m.Ack, m.Nack), as a consumer that settles
// messages directly does (bus.Ack, bus.Nack with GroupConfig.SettleDirect),
// and as fnmesh's replicas do (bus.RequestSubscriber, no messages): a
// nacked request comes back as its next delivery, acked ones are gone from
// the backlog, and a settled slot takes the next request.
func testGroupSubscriberSettles(t *testing.T, h *Harness) {
	for _, mode := range []string{"watermill", "direct", "requests"} {
		t.Run(mode, func(t *testing.T) {
			service := Name("settle")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			next := subscribeOneSlot(ctx, t, h.Bus, service, mode)
			for _, id := range []string{"a", "b"} {
				if err := h.Bus.SendRequest(ctx, service, &bus.Request{ID: id, Function: "f"}); err != nil {
					t.Fatal(err)
				}
			}
			ack := func(m delivered) bool { return m.ack() }
			nack := func(m delivered) bool { return m.nack() }
			// One slot: the first message is nacked, comes back as its
			// second delivery before the other one, and is acked.
			m, d := next()
			if m.id != "a" {
				t.Fatalf("first delivery is request %q, want a", m.id)
			}
			if d.Count != 1 {
				t.Fatalf("first delivery count %d, want 1", d.Count)
			}
			first := d.EntryID
			if !nack(m) {
				t.Fatal("nack reported false")
			}
			if ack(m) {
				t.Fatal("ack of a nacked message reported true")
			}
			m, d = next()
			if d.EntryID != first || d.Count != 2 {
				t.Fatalf("after a nack got entry %s delivery %d, want %s delivery 2", d.EntryID, d.Count, first)
			}
			if !ack(m) || !ack(m) {
				t.Fatal("ack reported false")
			}
			m, d = next()
			if d.EntryID == first || d.Count != 1 {
				t.Fatalf("got entry %s delivery %d, want the other entry's first delivery", d.EntryID, d.Count)
			}
			// The one slot came free only once the acked entry stopped
			// being pending: what a replica holds unacked stays within its
			// Concurrency (the bound on runs repeated after a crash).
			if b, err := h.Bus.Backlog(ctx, service); err != nil || b.Pending != 1 {
				t.Fatalf("backlog %+v (%v) when the next entry was delivered, want 1 pending: the acked one still pending", b, err)
			}
			ack(m)
			Eventually(t, 10*time.Second, "an empty backlog", func() bool {
				b, err := h.Bus.Backlog(ctx, service)
				return err == nil && b.Waiting == 0 && b.Pending == 0
			})

			// A reply that settles its request (Reply.Acks): the caller
			// gets the reply, the request is acked, its slot serves the
			// next request, and a later Ack changes nothing.
			replies := make(chan *bus.Reply, 2)
			inbox := bus.ReplyTopic(Name("settle-inbox"))
			in, err := h.Bus.OpenInbox(ctx, inbox, func(r *bus.Reply) { replies <- r })
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			for _, id := range []string{"c", "d"} {
				if err := h.Bus.SendRequest(ctx, service, &bus.Request{ID: id, Function: "f", ReplyTo: inbox}); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 {
				m, _ = next()
				id := m.id
				rep := &bus.Reply{ID: id, Payload: []byte(`1`)}
				m.acks(rep)
				if err := h.Bus.SendReply(ctx, inbox, rep); err != nil {
					t.Fatal(err)
				}
				select {
				case r := <-replies:
					if r.ID != id {
						t.Fatalf("reply to %s, want %s", r.ID, id)
					}
				case <-ctx.Done():
					t.Fatalf("no reply to %s", id)
				}
				if !ack(m) {
					t.Fatal("ack after the reply acked it reported false")
				}
			}
			Eventually(t, 10*time.Second, "replies acking their requests", func() bool {
				b, err := h.Bus.Backlog(ctx, service)
				return err == nil && b.Waiting == 0 && b.Pending == 0
			})
		})
	}
}

// delivered is one delivery of a group subscription, as a message or as a
// DeliveredRequest.
type delivered struct {
	id        string // the request's id
	ack, nack func() bool
	acks      func(*bus.Reply) // makes the reply settle the request
}

// subscribeOneSlot subscribes consumer "c1" to service's requests with
// one in flight, in mode "watermill" (messages settled with m.Ack and
// m.Nack), "direct" (messages settled with bus.Ack and bus.Nack) or
// "requests" (bus.RequestSubscriber), and returns the next delivery.
func subscribeOneSlot(ctx context.Context, t *testing.T, b bus.Bus, service, mode string) func() (delivered, bus.Delivery) {
	if mode != "requests" {
		msgs := SubscribeOneSlot(ctx, t, b, service, mode == "direct")
		ack, nack := (*message.Message).Ack, (*message.Message).Nack
		if mode == "direct" {
			ack, nack = bus.Ack, bus.Nack
		}
		return func() (delivered, bus.Delivery) {
			t.Helper()
			m, d := NextDelivery(ctx, t, msgs)
			return delivered{
				id:   m.Metadata.Get(bus.FieldID),
				ack:  func() bool { return ack(m) },
				nack: func() bool { return nack(m) },
				acks: func(r *bus.Reply) { r.Acks = m },
			}, d
		}
	}
	sub, err := b.GroupSubscriber(bus.GroupConfig{Consumer: "c1", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	rs, ok := sub.(bus.RequestSubscriber)
	if !ok {
		t.Fatalf("%T is not a bus.RequestSubscriber", sub)
	}
	reqs, err := rs.SubscribeRequests(ctx, bus.RequestTopic(service))
	if err != nil {
		t.Fatal(err)
	}
	return func() (delivered, bus.Delivery) {
		t.Helper()
		select {
		case r := <-reqs:
			if r.DecodeErr != nil {
				t.Fatalf("request %s: %v", r.Request.ID, r.DecodeErr)
			}
			return delivered{
				id: r.Request.ID, ack: r.Ack, nack: r.Nack,
				acks: func(rep *bus.Reply) { rep.AcksRequest = r },
			}, r.Delivery
		case <-ctx.Done():
			t.Fatal("no request delivered")
			return delivered{}, bus.Delivery{}
		}
	}
}
