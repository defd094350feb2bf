package meshview_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/internal/meshview"
	"github.com/fnmesh/fnmesh/registry"
)

func schema(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

type In1 struct {
	A int `json:"a" validate:"gte=0"`
	B int `json:"b"`
}

type In2 struct {
	A string `json:"a"`
	C int    `json:"c" validate:"required"`
}

func fixture(t *testing.T) registry.Store {
	t.Helper()
	s := registry.NewMemoryStore()
	ctx := context.Background()
	start := time.Now().Add(-time.Hour)
	fn := func(name string, in any) registry.Function {
		return registry.Function{Name: name, Access: "token", Request: registry.Schema(typeOf(in)), Response: registry.Schema(typeOf(0))}
	}
	recs := []*registry.Replica{
		{Service: "math", ID: "math-old", Host: "h1", Version: "1.0", StartedAt: start, Functions: []registry.Function{fn("add", In1{}), fn("div", In1{})}},
		{Service: "math", ID: "math-new", Host: "h2", Version: "2.0", StartedAt: start.Add(time.Minute), Functions: []registry.Function{fn("add", In2{}), fn("add@v2", In2{})}},
		{Service: "mail", ID: "mail-1", Host: "h3", StartedAt: start, Functions: []registry.Function{fn("welcome", In1{})}},
	}
	for _, r := range recs {
		if err := s.Announce(ctx, r, time.Minute, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestLS(t *testing.T) {
	s := fixture(t)
	services, err := meshview.Read(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := meshview.WriteLS(&out, services, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{
		"math  2 replicas  backlog 0", "functions: add, add@v2, div",
		"! math-new", "breaking add vs math-old: a retyped, b removed, c required",
		"not on every replica (version them, name@v2): div",
		"mail  1 replica",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ls output lacks %q:\n%s", want, text)
		}
	}
	if n := meshview.Lines(text); n > 80 {
		t.Errorf("ls line of %d columns:\n%s", n, text)
	}
	out.Reset()
	meshview.WriteLS(&out, services, true, time.Now())
	var list []struct {
		Name     string
		Replicas []struct {
			ID       string
			Breaking []registry.Conflict
		}
		Functions []string
		Queue     registry.Queue
	}
	if err := json.Unmarshal(out.Bytes(), &list); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out.String())
	}
	if len(list) != 2 || list[1].Name != "math" || len(list[1].Replicas) != 2 || len(list[1].Replicas[1].Breaking) != 1 {
		t.Fatalf("ls --json: %s", out.String())
	}
}

func TestDescribe(t *testing.T) {
	s := fixture(t)
	services, _ := meshview.Read(context.Background(), s, "math")
	var out bytes.Buffer
	if err := meshview.WriteDescribe(&out, services[0], "div", false, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "math.div") || !strings.Contains(out.String(), `"minimum": 0`) || !strings.Contains(out.String(), `"x-validate": "gte=0"`) {
		t.Fatalf("describe math.div:\n%s", out.String())
	}
	out.Reset()
	meshview.WriteDescribe(&out, services[0], "add@v2", true, false)
	var d struct {
		Functions []struct {
			Name    string
			Request map[string]any
		}
	}
	if err := json.Unmarshal(out.Bytes(), &d); err != nil || len(d.Functions) != 1 || d.Functions[0].Name != "add@v2" {
		t.Fatalf("describe --json: %v\n%s", err, out.String())
	}
	if req, _ := d.Functions[0].Request["required"].([]any); len(req) != 1 || req[0] != "c" {
		t.Fatalf("request schema %v", d.Functions[0].Request)
	}
	out.Reset()
	if err := meshview.WriteDescribe(&out, services[0], "add", false, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"math.add on math-new vs math-old (oldest): BREAKING", "! b removed", "! c required", "! a retyped: integer -> string"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("describe --diff lacks %q:\n%s", want, out.String())
		}
	}
	if err := meshview.WriteDescribe(&out, services[0], "nope", false, false); err == nil {
		t.Fatal("describe of a function nobody serves")
	}
}

func TestTopRatesAndQuantiles(t *testing.T) {
	s := registry.NewMemoryStore()
	ctx := context.Background()
	rec := &registry.Replica{Service: "math", ID: "r1", StartedAt: time.Now().Add(-time.Hour),
		Functions: []registry.Function{{Name: "add", Request: schema(map[string]any{}), Response: schema(map[string]any{})}}}
	s.Announce(ctx, rec, time.Minute, time.Hour)
	n := len(registry.LatencyBounds) + 1
	beat := func(calls, errs uint64, lat []uint64) {
		h := make([]uint64, n)
		copy(h, lat)
		ok, err := s.Heartbeat(ctx, "math", "r1", []string{"add"}, registry.Stats{At: time.Now(), Functions: map[string]registry.FunctionStats{"add": {Calls: calls, Errors: errs, InFlight: 2, Latency: h}}}, time.Minute, time.Hour)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
	}
	var top meshview.Top
	beat(100, 0, []uint64{100})
	t0 := time.Now()
	services, _ := meshview.Read(ctx, s)
	f := top.Next(services, t0)
	if f.Interval != 0 {
		t.Fatal("first frame has an interval")
	}
	// 200 more calls in 2 s, 20 failed; 100 took up to 1 ms, 100 up to 10 ms.
	lat := make([]uint64, n)
	lat[0] = 100
	lat[3] += 100 // (0.5ms, 1ms]
	lat[6] += 100 // (5ms, 10ms]
	beat(300, 20, lat)
	services, _ = meshview.Read(ctx, s)
	f = top.Next(services, t0.Add(2*time.Second))
	row := f.Rows["math"][0]
	if row.Rate != 100 || math.Abs(row.ErrorRate-0.1) > 1e-9 || row.InFlight != 2 {
		t.Fatalf("row %+v, want 100/s, 10%% errors, 2 running", row)
	}
	if row.P50 <= 0.0005 || row.P50 > 0.001 || row.P99 <= 0.005 || row.P99 > 0.01 {
		t.Fatalf("p50 %v p99 %v", row.P50, row.P99)
	}
	var out bytes.Buffer
	meshview.Render(&out, f)
	if n := meshview.Lines(out.String()); n > 80 {
		t.Fatalf("top line of %d columns:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "add") || !strings.Contains(out.String(), "100.0") || !strings.Contains(out.String(), "10.0") {
		t.Fatalf("top frame:\n%s", out.String())
	}
}

func TestQuantile(t *testing.T) {
	b := make([]uint64, len(registry.LatencyBounds)+1)
	if !math.IsNaN(meshview.Quantile(0.5, b)) {
		t.Fatal("quantile of nothing")
	}
	b[len(b)-1] = 10 // all slower than the last bound
	if q := meshview.Quantile(0.99, b); q != registry.LatencyBounds[len(registry.LatencyBounds)-1] {
		t.Fatalf("overflow quantile %v", q)
	}
}

func typeOf(v any) reflect.Type { return reflect.TypeOf(v) }
