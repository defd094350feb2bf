package telemetry_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/telemetry"
)

// What the metrics interceptors add to a call, label lookups included.
func BenchmarkClientMetrics(b *testing.B) {
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{})
	next := client.Invoker(func(context.Context, *client.Invocation) (json.RawMessage, error) { return nil, nil })
	inv := m.ClientInterceptor("billing")(next)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		in := &client.Invocation{Function: "math.add", Service: "math", Name: "add"}
		for pb.Next() {
			inv(context.Background(), in)
		}
	})
}

func BenchmarkServerMetrics(b *testing.B) {
	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{})
	h := m.ServerInterceptor()(handlers.HandlerFunc(func(context.Context, *handlers.Request) (any, error) { return nil, nil }))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := &handlers.Request{Service: "math", Function: "add", Caller: "billing", Attempt: 1}
		for pb.Next() {
			h.Serve(context.Background(), req)
		}
	})
}

// Tracing with no provider configured (the global no-op one).
func BenchmarkClientTracingNoop(b *testing.B) {
	tr := telemetry.NewTracing(nil)
	next := client.Invoker(func(context.Context, *client.Invocation) (json.RawMessage, error) { return nil, nil })
	inv := tr.ClientInterceptor()(next)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		in := &client.Invocation{Function: "math.add", Service: "math", Name: "add"}
		for pb.Next() {
			inv(context.Background(), in)
		}
	})
}
