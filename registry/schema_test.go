package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/registry"
)

type Base struct {
	ID string `json:"id" validate:"required,uuid"`
}

type Item struct {
	SKU string `json:"sku" validate:"required,len=8"`
	Qty int    `json:"qty" validate:"gt=0,lte=99"`
}

type Node struct {
	Name     string  `json:"name"`
	Children []*Node `json:"children,omitempty"`
}

type Order struct {
	Base
	Email    string            `json:"email" validate:"required,email"`
	Items    []Item            `json:"items" validate:"required,min=1,max=50,dive"`
	Tags     []string          `json:"tags,omitempty" validate:"dive,max=10"`
	Kind     string            `json:"kind" validate:"oneof=retail wholesale"`
	Prio     int               `json:"prio" validate:"oneof=1 2 3"`
	Note     *string           `json:"note,omitempty"`
	At       time.Time         `json:"at"`
	Meta     map[string]string `json:"meta"`
	Raw      json.RawMessage   `json:"raw"`
	Blob     []byte            `json:"blob"`
	Count    uint              `json:"count,string"`
	Tree     Node              `json:"tree"`
	Any      any               `json:"any"`
	Skipped  string            `json:"-"`
	private  int
	Untagged bool
}

func props(t *testing.T, raw json.RawMessage) map[string]any {
	t.Helper()
	var s map[string]any
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSchemaOfGoTypes(t *testing.T) {
	s := props(t, registry.Schema(reflect.TypeFor[Order]()))
	if s["type"] != "object" || s["title"] != "Order" || s["$schema"] == nil {
		t.Fatalf("top: %v", s)
	}
	p := s["properties"].(map[string]any)
	get := func(path ...string) any {
		var v any = p
		for _, k := range path {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%v: not an object at %s", path, k)
			}
			v = m[k]
		}
		return v
	}
	checks := map[string][2]any{
		"embedded id flattened":  {get("id", "format"), "uuid"},
		"email format":           {get("email", "format"), "email"},
		"items min":              {get("items", "minItems"), 1.0},
		"items max":              {get("items", "maxItems"), 50.0},
		"item sku len":           {get("items", "items", "properties", "sku", "minLength"), 8.0},
		"item qty gt":            {get("items", "items", "properties", "qty", "exclusiveMinimum"), 0.0},
		"item qty lte":           {get("items", "items", "properties", "qty", "maximum"), 99.0},
		"dive on tags":           {get("tags", "items", "maxLength"), 10.0},
		"time":                   {get("at", "format"), "date-time"},
		"map":                    {get("meta", "additionalProperties", "type"), "string"},
		"bytes":                  {get("blob", "contentEncoding"), "base64"},
		"string option":          {get("count", "type"), "string"},
		"pointer is its element": {get("note", "type"), "string"},
		"untagged field name":    {get("Untagged", "type"), "boolean"},
		"x-validate kept":        {get("email", "x-validate"), "required,email"},
	}
	for name, c := range checks {
		if !reflect.DeepEqual(c[0], c[1]) {
			t.Errorf("%s: %v, want %v", name, c[0], c[1])
		}
	}
	if e := get("kind", "enum"); !reflect.DeepEqual(e, []any{"retail", "wholesale"}) {
		t.Errorf("string enum %v", e)
	}
	if e := get("prio", "enum"); !reflect.DeepEqual(e, []any{1.0, 2.0, 3.0}) {
		t.Errorf("number enum %v", e)
	}
	for _, absent := range []string{"Skipped", "private", "-"} {
		if _, ok := p[absent]; ok {
			t.Errorf("property %s should not be in the schema", absent)
		}
	}
	req := s["required"].([]any)
	// kind and prio too: their zero values ("", 0) fail oneof, so the
	// replica refuses arguments without them.
	if strings.Join(toStrings(req), ",") != "id,email,items,kind,prio" {
		t.Errorf("required %v", req)
	}
	// A recursive type terminates.
	if c := get("tree", "properties", "children", "items"); c == nil {
		t.Errorf("recursive children: %v", c)
	}
	// The same type gives the same bytes (stable for comparison).
	if string(registry.Schema(reflect.TypeFor[Order]())) != string(registry.Schema(reflect.TypeFor[Order]())) {
		t.Error("schema not stable")
	}
	if got := string(registry.Schema(reflect.TypeFor[float64]())); !strings.Contains(got, `"type":"number"`) {
		t.Errorf("float64: %s", got)
	}
}

func toStrings(xs []any) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i], _ = x.(string)
	}
	return out
}

func TestDiffSchemas(t *testing.T) {
	type V1 struct {
		A int             `json:"a"`
		B string          `json:"b"`
		C []int           `json:"c"`
		D struct{ X int } `json:"d"`
		E int             `json:"e" validate:"required"`
	}
	type V2 struct {
		A string             `json:"a"`                     // retyped
		C []string           `json:"c"`                     // items retyped
		D struct{ X, Y int } `json:"d"`                     // nested field added
		E int                `json:"e"`                     // no longer required
		F int                `json:"f" validate:"required"` // new and required
		G int                `json:"g,omitempty"`           // new, optional
	}
	changes, err := registry.DiffSchemas(registry.Schema(reflect.TypeFor[V1]()), registry.Schema(reflect.TypeFor[V2]()))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]registry.Change{}
	for _, c := range changes {
		got[c.Path+" "+string(c.Kind)] = c
	}
	want := map[string]bool{
		"a retyped": true, "b removed": true, "c retyped": true, "f required": true,
		"d.Y added": false, "e optional": false, "g added": false, "e rules": false,
	}
	for k, breaking := range want {
		c, ok := got[k]
		if !ok {
			t.Errorf("no change %q in %v", k, changes)
			continue
		}
		if c.Breaking != breaking {
			t.Errorf("%s: breaking %v, want %v", k, c.Breaking, breaking)
		}
	}
	if !registry.Breaking(changes) {
		t.Error("Breaking() false")
	}
	// Only additions: compatible.
	type V3 struct {
		A int             `json:"a"`
		B string          `json:"b"`
		C []int           `json:"c"`
		D struct{ X int } `json:"d"`
		E int             `json:"e" validate:"required"`
		H bool            `json:"h"`
	}
	changes, _ = registry.DiffSchemas(registry.Schema(reflect.TypeFor[V1]()), registry.Schema(reflect.TypeFor[V3]()))
	if registry.Breaking(changes) || len(changes) != 1 {
		t.Errorf("adding an optional field: %v", changes)
	}
	if _, err := registry.DiffSchemas([]byte("{"), []byte("{}")); err == nil {
		t.Error("bad JSON accepted")
	}
}

// countingStore counts reads and can fail them.
type countingStore struct {
	registry.Store
	reads atomic.Int64
	fail  atomic.Bool
}

func (c *countingStore) Service(ctx context.Context, name string) (*registry.ServiceView, error) {
	c.reads.Add(1)
	if c.fail.Load() {
		return nil, errors.New("redis down")
	}
	return c.Store.Service(ctx, name)
}

func TestWatcherReadsTheRegistryInTheBackgroundOnly(t *testing.T) {
	inner := registry.NewMemoryStore()
	ctx := context.Background()
	rec := &registry.Replica{Service: "math", ID: "r1", StartedAt: time.Now(), Functions: []registry.Function{{Name: "add"}}}
	inner.Announce(ctx, rec, time.Minute, time.Hour)
	s := &countingStore{Store: inner}
	w, err := registry.NewWatcher(nil, registry.WatcherConfig{Store: s, Refresh: time.Hour, Forget: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 10000; i++ {
		if err := w.Check(ctx, "math", "add", false); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.reads.Load(); n != 1 {
		t.Fatalf("%d registry reads for 10,000 checks, want 1", n)
	}
	// A failing check reads again, at most once per Recheck.
	for i := 0; i < 100; i++ {
		if fnmesh.CodeOf(w.Check(ctx, "math", "sub", false)) != fnmesh.CodeNotFound {
			t.Fatal("sub found")
		}
	}
	if n := s.reads.Load(); n > 3 {
		t.Fatalf("%d reads after 100 failing checks, want at most a few", n)
	}
	// The registry cannot be read: calls go through.
	s.fail.Store(true)
	w2, _ := registry.NewWatcher(nil, registry.WatcherConfig{Store: s, Refresh: time.Hour, Logger: quiet})
	defer w2.Close()
	if err := w2.Check(ctx, "math", "sub", false); err != nil {
		t.Fatalf("check with the registry down: %v, want nil", err)
	}
}

func TestWatcherForgetsServicesNobodyCalls(t *testing.T) {
	s := registry.NewMemoryStore()
	w, _ := registry.NewWatcher(nil, registry.WatcherConfig{Store: s, Refresh: 10 * time.Millisecond, Forget: 30 * time.Millisecond})
	defer w.Close()
	for i := 0; i < 50; i++ {
		w.Check(context.Background(), "svc"+string(rune('a'+i%26))+string(rune('a'+i/26)), "f", false)
	}
	if n := w.Watching(); n != 50 {
		t.Fatalf("watching %d, want 50", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for w.Watching() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still watching %d services nobody calls", w.Watching())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
