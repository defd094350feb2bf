package integration

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// fnmeshKeys lists the keys of service (SCAN MATCH fnmesh:{service}*).
func fnmeshKeys(t *testing.T, service string) []string {
	t.Helper()
	var keys []string
	it := inspector(t).Scan(context.Background(), 0, "fnmesh:{"+service+"}*", 1000).Iterator()
	for it.Next(context.Background()) {
		keys = append(keys, it.Val())
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	return keys
}

// A request never creates a service's stream: Call and Send to a service
// no replica ever served are not_found and leave no key; a service whose
// replicas all stopped keeps its stream and group, so a Send is queued
// and runs when a replica starts (scale from zero).
func TestRequestsNeverCreateStreams(t *testing.T) {
	ctx := context.Background()
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	c := h.Client(client.Config{Logger: meshtest.Quiet})

	nobody := meshtest.Name("nobody")
	meshtest.WantCode(t, c.Call(ctx, nobody+".add", meshtest.AddIn{A: 1}, nil), fnmesh.CodeNotFound)
	meshtest.WantCode(t, c.Send(ctx, nobody+".add", meshtest.AddIn{A: 1}), fnmesh.CodeNotFound)
	meshtest.WantCode(t, c.Send(ctx, nobody+".add@v2", meshtest.AddIn{A: 1}), fnmesh.CodeNotFound)
	// The publisher (replays, tools) too.
	m := (&bus.Request{ID: "x", Function: "add"}).Message()
	m.SetContext(ctx)
	meshtest.WantCode(t, h.Bus.Publisher().Publish(bus.RequestTopic(nobody), m), fnmesh.CodeNotFound)
	if keys := fnmeshKeys(t, nobody); len(keys) != 0 {
		t.Fatalf("requests to a service nobody serves created keys %v", keys)
	}

	// Served once, then every replica gone: the Send is queued.
	name := meshtest.Name("zero")
	ran := make(chan int, 10)
	newSvc := func() *handlers.Service {
		svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
		handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
			ran <- in.A
			return meshtest.AddOut{Sum: in.A + in.B}, nil
		})
		return svc
	}
	svc := newSvc()
	if err := h.StartStoppable(svc)(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, name+".add", meshtest.AddIn{A: 42}); err != nil {
		t.Fatalf("send to a service with no replica running: %v", err)
	}
	h.Start(newSvc())
	select {
	case got := <-ran:
		if got != 42 {
			t.Fatalf("ran %d, want 42", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued send did not run when a replica started")
	}
}
