package telemetry_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type EchoIn struct {
	Text string `json:"text"`
}

// A call from a client to front.hello, which calls back.echo, is one
// trace: client span -> front server span -> client span -> back server
// span, each the parent of the next. Logs inside back.echo carry its
// trace and correlation ids.
func TestTraceCrossesServices(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	tr := telemetry.NewTracing(tp)
	h := meshtest.NewHarness(t, bus.NewMemory())
	var logs meshtest.SyncBuffer
	log := slog.New(telemetry.LogHandler(slog.NewJSONHandler(&logs, nil)))

	backCfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet}
	tr.InstrumentService(&backCfg)
	back := handlers.NewService("back", backCfg)
	handlers.Register(back, "echo", func(ctx context.Context, in EchoIn) (string, error) {
		log.InfoContext(ctx, "echoing", "text", in.Text)
		return in.Text, nil
	})
	h.Start(back)

	// front's own client to call back, traced as well.
	fcc := client.Config{Name: "front"}
	tr.InstrumentClient(&fcc)
	frontClient := h.Client(fcc)
	frontCfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet}
	tr.InstrumentService(&frontCfg)
	front := handlers.NewService("front", frontCfg)
	handlers.Register(front, "hello", func(ctx context.Context, in EchoIn) (string, error) {
		var out string
		err := frontClient.Call(ctx, "back.echo", EchoIn{Text: "hello " + in.Text}, &out)
		return out, err
	})
	h.Start(front)

	cc := client.Config{Name: "test"}
	tr.InstrumentClient(&cc)
	c := h.Client(cc)
	var out string
	if err := c.Call(context.Background(), "front.hello", EchoIn{Text: "ada"}, &out); err != nil || out != "hello ada" {
		t.Fatalf("call: %v %q", err, out)
	}

	spans := rec.Ended()
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()+"/"+s.SpanKind().String()] = append(byName[s.Name()+"/"+s.SpanKind().String()], s)
	}
	one := func(key string) sdktrace.ReadOnlySpan {
		if len(byName[key]) != 1 {
			t.Fatalf("%d spans %s; all: %v", len(byName[key]), key, names(spans))
		}
		return byName[key][0]
	}
	c1, s1 := one("front.hello/client"), one("front.hello/server")
	c2, s2 := one("back.echo/client"), one("back.echo/server")
	trace := c1.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{s1, c2, s2} {
		if s.SpanContext().TraceID() != trace {
			t.Fatalf("span %s is in trace %s, want %s", s.Name(), s.SpanContext().TraceID(), trace)
		}
	}
	if c1.Parent().IsValid() {
		t.Fatalf("the caller's span has a parent")
	}
	chain := []sdktrace.ReadOnlySpan{c1, s1, c2, s2}
	for i := 1; i < len(chain); i++ {
		if chain[i].Parent().SpanID() != chain[i-1].SpanContext().SpanID() {
			t.Fatalf("%s/%s is not the child of %s/%s", chain[i].Name(), chain[i].SpanKind(), chain[i-1].Name(), chain[i-1].SpanKind())
		}
	}
	if !strings.Contains(logs.String(), `"trace_id":"`+trace.String()+`"`) || !strings.Contains(logs.String(), `"request_id":"`) || !strings.Contains(logs.String(), `"function":"back.echo"`) {
		t.Fatalf("log record lacks trace or correlation ids: %s", logs.String())
	}
	// An error is recorded on the spans.
	err := c.Call(context.Background(), "back.echo", json.RawMessage(`[1]`), nil)
	meshtest.WantCode(t, err, fnmesh.CodeInvalidArgument)
	var failed int
	for _, s := range rec.Ended() {
		if s.Status().Code.String() == "Error" {
			failed++
		}
	}
	if failed < 2 {
		t.Fatalf("%d spans with error status, want the client's and the server's", failed)
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name()+"/"+s.SpanKind().String())
	}
	return out
}

// Without a configured provider the interceptors pass a caller's trace
// context on unchanged and record nothing.
func TestTracingWithoutProviderPropagates(t *testing.T) {
	tr := telemetry.NewTracing(nil)
	var seen string
	inv := &client.Invocation{Function: "a.b", Service: "a", Name: "b"}
	next := client.Invoker(func(ctx context.Context, inv *client.Invocation) (json.RawMessage, error) {
		seen = inv.TraceParent
		return nil, nil
	})
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true}))
	tr.ClientInterceptor()(next)(ctx, inv)
	if seen != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Fatalf("traceparent %q", seen)
	}
}

func TestMetricsCountWhatHappened(t *testing.T) {
	m, err := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	b := bus.NewMemory()
	h := meshtest.NewHarness(t, b)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet, OpsAddr: addr, Retry: handlers.RetryPolicy{InitialBackoff: 5 * time.Millisecond}}
	m.InstrumentService(&cfg)
	cfg.Plugins = append(cfg.Plugins, registry.NewAnnouncer(registry.Config{Stats: m, Heartbeat: 50 * time.Millisecond, TTL: 2 * time.Second}))
	svc := handlers.NewService("calc", cfg)
	entered, release := make(chan struct{}), make(chan struct{})
	handlers.Register(svc, "sqrt", func(ctx context.Context, x float64) (float64, error) {
		if x < 0 {
			return 0, fnmesh.NewError("negative_input", "no")
		}
		return x, nil
	})
	handlers.Register(svc, "block", func(ctx context.Context, _ struct{}) (int, error) {
		entered <- struct{}{}
		<-release
		return 1, nil
	})
	handlers.Register(svc, "fail", func(ctx context.Context, _ struct{}) (int, error) { return 0, errors.New("down") })
	var flaky sync.Once
	handlers.Register(svc, "flaky", func(ctx context.Context, _ struct{}) (int, error) {
		err := errors.New("first run fails")
		flaky.Do(func() { err = nil })
		if err == nil {
			return 0, errors.New("first run fails")
		}
		return 1, nil
	})
	stop := h.StartStoppable(svc)
	<-svc.Started()

	cc := client.Config{Name: "billing", Breaker: client.BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: time.Hour}}
	m.InstrumentClient(&cc)
	c := h.Client(cc)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := c.Call(ctx, "calc.sqrt", 4.0, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.Call(ctx, "calc.sqrt", -1.0, nil)
	c.Call(ctx, "calc.nope", 1.0, nil) // refused by the client's registry check
	// Past the check, the replica rejects it (never reaching the chain)
	// and dead-letters it.
	h.Client(client.Config{SkipRegistryCheck: true}).Call(ctx, "calc.nope", 1.0, nil)

	want := map[string]float64{
		`fnmesh_client_calls_total{caller="billing",code="ok",function="calc.sqrt",service="calc"}`:                 3,
		`fnmesh_client_calls_total{caller="billing",code="negative_input",function="calc.sqrt",service="calc"}`:     1,
		`fnmesh_client_calls_total{caller="billing",code="not_found",function="calc.nope",service="calc"}`:          1,
		`fnmesh_server_calls_total{caller="billing",code="ok",function="calc.sqrt",service="calc"}`:                 3,
		`fnmesh_server_calls_total{caller="billing",code="negative_input",function="calc.sqrt",service="calc"}`:     1,
		`fnmesh_client_call_duration_seconds_count{caller="billing",code="ok",function="calc.sqrt",service="calc"}`: 3,
		`fnmesh_server_call_duration_seconds_count{code="ok",function="calc.sqrt",service="calc"}`:                  3,
	}
	checkMetrics(t, addr, want)

	// In flight, on both sides, while a call runs.
	done := make(chan error, 1)
	go func() { done <- c.Call(ctx, "calc.block", struct{}{}, nil) }()
	<-entered
	// Pending on the in-memory bus comes with the next heartbeat.
	meshtest.Eventually(t, 2*time.Second, "pending not reported", func() bool {
		return scrape(t, addr)[`fnmesh_queue_pending{service="calc"}`] == "1"
	})
	checkMetrics(t, addr, map[string]float64{
		`fnmesh_client_in_flight{caller="billing",function="calc.block",service="calc"}`: 1,
		`fnmesh_server_in_flight{function="calc.block",service="calc"}`:                  1,
		`fnmesh_queue_pending{service="calc"}`:                                           1,
	})
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Two internal failures open the breaker.
	c.Call(ctx, "calc.fail", struct{}{}, nil)
	c.Call(ctx, "calc.fail", struct{}{}, nil)
	meshtest.WantCode(t, c.Call(ctx, "calc.fail", struct{}{}, nil), fnmesh.CodeUnavailable)
	checkMetrics(t, addr, map[string]float64{
		`fnmesh_client_breaker_state{caller="billing",function="calc.fail"}`:                                 2,
		`fnmesh_client_calls_total{caller="billing",code="internal",function="calc.fail",service="calc"}`:    2,
		`fnmesh_client_calls_total{caller="billing",code="unavailable",function="calc.fail",service="calc"}`: 1,
		`fnmesh_dead_letters{service="calc"}`:                                                                1, // calc.nope
		`fnmesh_server_calls_total{caller="billing",code="internal",function="calc.fail",service="calc"}`:    2,
	})

	// Stats for the registry's heartbeat count the same runs.
	st := m.ReplicaStats("calc")
	if s := st["sqrt"]; s.Calls != 4 || s.Errors != 1 || sum(s.Latency) != 4 {
		t.Fatalf("stats of sqrt %+v", s)
	}
	store, _ := registry.StoreFor(b)
	meshtest.Eventually(t, 2*time.Second, "stats not in the registry", func() bool {
		v, _ := store.Service(ctx, "calc")
		return len(v.Replicas) == 1 && v.Replicas[0].Stats.Functions["sqrt"].Calls == 4
	})

	// Retries of a failing send are counted.
	if err := c.Send(ctx, "calc.flaky", struct{}{}); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 2*time.Second, "retry not counted", func() bool {
		g := scrape(t, addr)
		return g[`fnmesh_server_retries_total{function="calc.flaky",service="calc"}`] == "1" &&
			g[`fnmesh_server_calls_total{caller="billing",code="ok",function="calc.flaky",service="calc"}`] == "1"
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Series: sqrt ok, sqrt negative_input, nope not_found, block ok,
	// fail internal, fail unavailable, flaky ok (the send).
	if n, err := testutil.GatherAndCount(m.Registry(), "fnmesh_client_calls_total"); err != nil || n != 7 {
		t.Fatalf("%d client call series (%v), want 7", n, err)
	}
}

func sum(xs []uint64) (s uint64) {
	for _, x := range xs {
		s += x
	}
	return s
}

func scrape(t *testing.T, addr string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	got := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		got[line[:i]] = line[i+1:]
	}
	return got
}

// checkMetrics scrapes /metrics from the ops server and compares values.
func checkMetrics(t *testing.T, addr string, want map[string]float64) {
	t.Helper()
	got := scrape(t, addr)
	for k, v := range want {
		if got[k] != strings.TrimSuffix(strings.TrimSuffix(formatFloat(v), ".0"), ".") {
			t.Errorf("%s = %q, want %v", k, got[k], v)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func formatFloat(f float64) string {
	b, _ := json.Marshal(f)
	return string(b)
}
