package examples_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// Each example function's announced request schema accepts exactly the
// arguments its replica runs: every input below is judged by a JSON
// Schema validator (formats asserted) and by a replica, and they must
// agree. Unknown fields are allowed by both (the schemas leave
// additionalProperties open, as encoding/json ignores them).
func TestSchemasAgreeWithReplicas(t *testing.T) {
	b := bus.NewMemory()
	h := meshtest.NewHarness(t, b)
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet}
	math, mail := examples.Math(cfg), examples.MailService(cfg, nil)
	h.Start(math)
	h.Start(mail)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	store, err := registry.StoreFor(b)
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string][]string{
		"math.add":  {`{"a":1,"b":2}`, `{"a":1}`, `{}`, `{"a":1,"b":2,"c":3}`, `{"a":"1"}`, `{"b":true}`, `[1,2]`, `"x"`, `{"a":1e3}`},
		"math.div":  {`{"a":1,"b":2}`, `{"a":1,"b":0}`, `{"a":1}`, `{"b":-0.5}`, `{"b":"2"}`, `{"a":1,"b":2,"x":{}}`, `[]`},
		"math.sqrt": {`{"x":4}`, `{"x":-4}`, `{}`, `{"x":"4"}`, `{"y":1}`, `7`},
		"mail.welcome": {`{"to":"ada@example.com"}`, `{"to":"ada@example.com","name":"Ada"}`, `{"to":""}`, `{}`, `{"name":"Ada"}`,
			`{"to":"not an address"}`, `{"to":5}`, `{"to":"ada@example.com","cc":"x"}`},
	}
	ctx := context.Background()
	for fn, ins := range inputs {
		service, name, _ := client.SplitName(fn)
		view, err := store.Service(ctx, service)
		if err != nil {
			t.Fatal(err)
		}
		var schemaJSON json.RawMessage
		for _, r := range view.Replicas {
			if f, ok := r.Function(name); ok {
				schemaJSON = f.Request
			}
		}
		if schemaJSON == nil {
			t.Fatalf("%s not announced", fn)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemaJSON))
		if err != nil {
			t.Fatal(err)
		}
		comp := jsonschema.NewCompiler()
		comp.AssertFormat()
		if err := comp.AddResource(fn+".json", doc); err != nil {
			t.Fatal(err)
		}
		schema, err := comp.Compile(fn + ".json")
		if err != nil {
			t.Fatalf("%s: schema does not compile: %v\n%s", fn, err, schemaJSON)
		}
		accepted := 0
		for _, in := range ins {
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader([]byte(in)))
			if err != nil {
				t.Fatal(err)
			}
			schemaOK := schema.Validate(v) == nil
			callErr := c.Call(ctx, fn, json.RawMessage(in), nil)
			if code := fnmesh.CodeOf(callErr); callErr != nil && code != fnmesh.CodeInvalidArgument && code != examples.ErrNegative.Code {
				t.Fatalf("%s(%s): %v", fn, in, callErr)
			}
			replicaOK := fnmesh.CodeOf(callErr) != fnmesh.CodeInvalidArgument
			if schemaOK != replicaOK {
				t.Errorf("%s(%s): schema accepts=%v, replica accepts=%v (%v)\nschema: %s", fn, in, schemaOK, replicaOK, callErr, schemaJSON)
			}
			if schemaOK {
				accepted++
			}
		}
		if accepted == 0 || accepted == len(ins) {
			t.Errorf("%s: %d of %d inputs accepted: the inputs must include both kinds", fn, accepted, len(ins))
		}
	}
}
