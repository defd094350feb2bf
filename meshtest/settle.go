package meshtest

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh/bus"
)

// testGroupSubscriberSettles drives a group subscription as a plain
// watermill consumer would (m.Ack, m.Nack) and as fnmesh's replicas do
// (bus.Ack, bus.Nack with GroupConfig.SettleDirect): a nacked message comes
// back as its next delivery, acked ones are gone from the backlog, and a
// settled slot takes the next message.
func testGroupSubscriberSettles(t *testing.T, h *Harness) {
	for _, direct := range []bool{false, true} {
		name := "watermill"
		if direct {
			name = "direct"
		}
		t.Run(name, func(t *testing.T) {
			service := Name("settle")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			msgs := SubscribeOneSlot(ctx, t, h.Bus, service, direct)
			for _, id := range []string{"a", "b"} {
				if err := h.Bus.SendRequest(ctx, service, &bus.Request{ID: id, Function: "f"}); err != nil {
					t.Fatal(err)
				}
			}
			ack, nack := (*message.Message).Ack, (*message.Message).Nack
			if direct {
				ack, nack = bus.Ack, bus.Nack
			}
			next := func() (*message.Message, bus.Delivery) { t.Helper(); return NextDelivery(ctx, t, msgs) }
			// One slot: the first message is nacked, comes back as its
			// second delivery before the other one, and is acked.
			m, d := next()
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
				id := m.Metadata.Get(bus.FieldID)
				if err := h.Bus.SendReply(ctx, inbox, &bus.Reply{ID: id, Payload: []byte(`1`), Acks: m}); err != nil {
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
