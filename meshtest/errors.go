package meshtest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

var errInsufficientFunds = fnmesh.NewError("insufficient_funds", "balance too low")

func testApplicationError(t *testing.T, h *Harness) {
	name := Name("bank")
	svc := openService(name)
	handlers.Register(svc, "pay", func(context.Context, struct{ Amount int }) (struct{}, error) {
		return struct{}{}, errInsufficientFunds
	})
	handlers.Register(svc, "plain", func(context.Context, struct{}) (struct{}, error) {
		return struct{}{}, errors.New("database is on fire")
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	err := c.Call(context.Background(), fn(name, "pay"), struct{ Amount int }{5}, nil)
	fe := WantCode(t, err, "insufficient_funds")
	if fe.Message != "balance too low" {
		t.Fatalf("message %q", fe.Message)
	}
	if !errors.Is(err, &fnmesh.Error{Code: "insufficient_funds"}) {
		t.Fatal("errors.Is does not match the application code")
	}
	if errors.Is(err, fnmesh.ErrInternal) {
		t.Fatal("application error matches internal")
	}
	err = c.Call(context.Background(), fn(name, "plain"), struct{}{}, nil)
	fe = WantCode(t, err, fnmesh.CodeInternal)
	if !strings.Contains(fe.Message, "database is on fire") {
		t.Fatalf("internal error message %q lost the cause", fe.Message)
	}
}

func testUnknownFunction(t *testing.T, h *Harness) {
	name := Name("math")
	svc := openService(name)
	handlers.Register(svc, "add", add)
	h.Start(svc)
	c := h.Client(client.Config{})
	err := c.Call(context.Background(), fn(name, "mul"), AddIn{}, nil)
	WantCode(t, err, fnmesh.CodeNotFound)
	if !errors.Is(err, fnmesh.ErrNotFound) {
		t.Fatal("errors.Is(err, ErrNotFound) false")
	}
	// Past the client's registry check, the replica refuses it too and
	// records it. A co-located call is answered in-process: no request
	// was stored, so none is recorded.
	raw := h.Client(client.Config{SkipRegistryCheck: true})
	WantCode(t, raw.Call(context.Background(), fn(name, "mul"), AddIn{}, nil), fnmesh.CodeNotFound)
	if h.Local == nil {
		Eventually(t, 10*time.Second, "request for an unknown function not dead-lettered", func() bool {
			d := deadLetters(h, name)
			return len(d) == 1 && d[0].Code == fnmesh.CodeNotFound
		})
	}
	err = c.Call(context.Background(), "no-dot-here", AddIn{}, nil)
	WantCode(t, err, fnmesh.CodeInvalidArgument)
}

func testPanicBecomesInternal(t *testing.T, h *Harness) {
	name := Name("crashy")
	svc := openService(name)
	handlers.Register(svc, "boom", func(context.Context, struct{}) (int, error) {
		var m map[string]int
		m["x"] = 1 // nil map write: a real panic
		return 0, nil
	})
	handlers.Register(svc, "add", add)
	h.Start(svc)
	c := h.Client(client.Config{})
	for i := 0; i < 3; i++ {
		err := c.Call(context.Background(), fn(name, "boom"), struct{}{}, nil)
		fe := WantCode(t, err, fnmesh.CodeInternal)
		if !strings.Contains(fe.Message, "panicked") || strings.Contains(fe.Message, "nil map") {
			t.Fatalf("message %q: want it to say it panicked, without the panic value", fe.Message)
		}
	}
	var out AddOut
	if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 1, B: 1}, &out); err != nil || out.Sum != 2 {
		t.Fatalf("replica stopped serving after panics: %v %+v", err, out)
	}
}

func testValidation(t *testing.T, h *Harness) {
	type Item struct {
		SKU string `json:"sku" validate:"required"`
		Qty int    `json:"qty" validate:"gte=1"`
	}
	type Order struct {
		Email string `json:"email" validate:"required,email"`
		Items []Item `json:"items" validate:"required,min=1,dive"`
	}
	name := Name("shop")
	svc := openService(name)
	var ran atomic.Bool
	handlers.Register(svc, "order", func(context.Context, Order) (string, error) {
		ran.Store(true)
		return "ok", nil
	})
	h.Start(svc)
	c := h.Client(client.Config{})
	err := c.Call(context.Background(), fn(name, "order"), Order{Email: "not-an-email", Items: []Item{{SKU: "", Qty: 0}}}, nil)
	fe := WantCode(t, err, fnmesh.CodeInvalidArgument)
	got := map[string]string{}
	for _, f := range fe.Fields {
		got[f.Field] = f.Rule
	}
	want := map[string]string{"email": "email", "items[0].sku": "required", "items[0].qty": "gte"}
	for f, rule := range want {
		if got[f] != rule {
			t.Errorf("field %s: rule %q, want %q (all: %+v)", f, got[f], rule, fe.Fields)
		}
	}
	for f := range want {
		if !strings.Contains(fe.Message, f) {
			t.Errorf("message %q does not name %s", fe.Message, f)
		}
	}
	if ran.Load() {
		t.Fatal("function ran with invalid arguments")
	}
	var ok string
	if err := c.Call(context.Background(), fn(name, "order"), Order{Email: "a@b.c", Items: []Item{{SKU: "x", Qty: 1}}}, &ok); err != nil || ok != "ok" {
		t.Fatalf("valid order: %v %q", err, ok)
	}
}

func testMalformedArguments(t *testing.T, h *Harness) {
	name := Name("math")
	svc := openService(name)
	handlers.Register(svc, "add", add)
	h.Start(svc)
	c := h.Client(client.Config{})
	err := c.Call(context.Background(), fn(name, "add"), []byte(`{"a":"one","b":2}`), nil)
	fe := WantCode(t, err, fnmesh.CodeInvalidArgument)
	if !strings.Contains(fe.Message, "not valid JSON") {
		t.Fatalf("message %q", fe.Message)
	}
	err = c.Call(context.Background(), fn(name, "add"), []byte(`{"a":`), nil)
	WantCode(t, err, fnmesh.CodeInvalidArgument) // caught by the client
}

func testOversizedArguments(t *testing.T, h *Harness) {
	name := Name("big")
	svc := openService(name, func(c *handlers.Config) { c.MaxPayloadBytes = 1000 })
	handlers.Register(svc, "echo", func(_ context.Context, s string) (int, error) { return len(s), nil })
	h.Start(svc)
	big := strings.Repeat("x", 5000)
	small := h.Client(client.Config{MaxPayloadBytes: 1000})
	err := small.Call(context.Background(), fn(name, "echo"), big, nil)
	WantCode(t, err, fnmesh.CodeInvalidArgument) // refused before sending
	lax := h.Client(client.Config{MaxPayloadBytes: 10000})
	err = lax.Call(context.Background(), fn(name, "echo"), big, nil)
	fe := WantCode(t, err, fnmesh.CodeInvalidArgument) // refused by the replica
	if !strings.Contains(fe.Message, "exceed") {
		t.Fatalf("message %q", fe.Message)
	}
	Eventually(t, 10*time.Second, "oversized request not dead-lettered", func() bool {
		d := deadLetters(h, name)
		return len(d) == 1 && d[0].Code == fnmesh.CodeInvalidArgument
	})
	var n int
	if err := lax.Call(context.Background(), fn(name, "echo"), "hi", &n); err != nil || n != 2 {
		t.Fatalf("replica stopped serving: %v", err)
	}
}

func testMalformedMessage(t *testing.T, h *Harness) {
	name := Name("math")
	svc := openService(name)
	handlers.Register(svc, "add", add)
	h.Start(svc)
	c := h.Client(client.Config{})
	// Entries a hand-written or broken producer could add.
	bad := []map[string]string{
		{"garbage": "yes"}, // no id, no fn
		{bus.FieldID: "x1", bus.FieldReplyTo: c.Inbox()},                         // no fn
		{bus.FieldID: "x2", bus.FieldFunction: "add", bus.FieldDeadline: "soon"}, // bad deadline
		{bus.FieldID: "x3", bus.FieldFunction: "add", bus.FieldReplyTo: "some:other:key"},
		{bus.FieldID: "x4", bus.FieldFunction: "add", bus.FieldVersion: "99"},
	}
	for _, md := range bad {
		m := message.NewMessage("", []byte("not json"))
		for k, v := range md {
			m.Metadata[k] = v
		}
		if err := h.Bus.Publisher().Publish(bus.RequestTopic(name), m); err != nil {
			t.Fatal(err)
		}
	}
	Eventually(t, 10*time.Second, "malformed entries not all dead-lettered", func() bool {
		return len(deadLetters(h, name)) == len(bad)
	})
	for _, d := range deadLetters(h, name) {
		if d.Code != fnmesh.CodeInvalidArgument || !strings.Contains(d.Reason, "malformed") {
			t.Errorf("dead letter %+v: want invalid_argument, malformed", d)
		}
	}
	var out AddOut
	if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 2, B: 3}, &out); err != nil || out.Sum != 5 {
		t.Fatalf("replica stopped serving: %v", err)
	}
}
