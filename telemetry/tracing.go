package telemetry

import (
	"context"
	"encoding/json"
	"log/slog"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// TracerName names the tracer fnmesh's spans come from.
const TracerName = "github.com/fnmesh/fnmesh"

// Tracing makes OpenTelemetry spans for calls: a client span around each
// Call (producer span for a Send) whose context travels in the request's
// "tp" field as a W3C traceparent, and a server span, its child, around
// each run on the replica. A function that calls others with the ctx it
// was given continues the same trace: caller -> function -> the
// functions it calls.
type Tracing struct {
	tracer trace.Tracer
	prop   propagation.TraceContext
}

// NewTracing returns tracing with spans from tp; nil means the global
// provider (otel.GetTracerProvider()).
func NewTracing(tp trace.TracerProvider) *Tracing {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &Tracing{tracer: tp.Tracer(TracerName)}
}

// invCarrier carries the traceparent in an invocation.
type invCarrier struct{ inv *client.Invocation }

func (c invCarrier) Get(key string) string {
	if key == "traceparent" {
		return c.inv.TraceParent
	}
	return ""
}

func (c invCarrier) Set(key, value string) {
	if key == "traceparent" {
		c.inv.TraceParent = value
	}
}

func (c invCarrier) Keys() []string { return []string{"traceparent"} }

// reqCarrier reads the traceparent of a request.
type reqCarrier struct{ tp string }

func (c reqCarrier) Get(key string) string {
	if key == "traceparent" {
		return c.tp
	}
	return ""
}
func (c reqCarrier) Set(string, string) {}
func (c reqCarrier) Keys() []string     { return []string{"traceparent"} }

func endSpan(span trace.Span, err error) {
	if err != nil {
		code := fnmesh.CodeOf(err)
		span.SetAttributes(attribute.String("fnmesh.code", string(code)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// ClientInterceptor starts a span per Call or Send and sends its context
// with the request.
func (t *Tracing) ClientInterceptor() client.Interceptor {
	return func(next client.Invoker) client.Invoker {
		return func(ctx context.Context, inv *client.Invocation) (json.RawMessage, error) {
			kind := trace.SpanKindClient
			if inv.Async {
				kind = trace.SpanKindProducer
			}
			ctx, span := t.tracer.Start(ctx, inv.Function, trace.WithSpanKind(kind))
			if span.IsRecording() {
				span.SetAttributes(
					attribute.String("rpc.system", "fnmesh"),
					attribute.String("rpc.service", inv.Service),
					attribute.String("rpc.method", inv.Name),
					attribute.String("fnmesh.request_id", inv.ID),
				)
			}
			t.prop.Inject(ctx, invCarrier{inv})
			res, err := next(ctx, inv)
			if inv.Replica != "" && span.IsRecording() {
				span.SetAttributes(attribute.String("fnmesh.replica", inv.Replica))
			}
			endSpan(span, err)
			return res, err
		}
	}
}

// ServerInterceptor continues the caller's trace around each run; put it
// in handlers.Config.Interceptors.
func (t *Tracing) ServerInterceptor() handlers.Middleware {
	return func(next handlers.Handler) handlers.Handler {
		return handlers.HandlerFunc(func(ctx context.Context, req *handlers.Request) (any, error) {
			if req.TraceParent != "" {
				ctx = t.prop.Extract(ctx, reqCarrier{req.TraceParent})
			}
			kind := trace.SpanKindServer
			if req.Async {
				kind = trace.SpanKindConsumer
			}
			ctx, span := t.tracer.Start(ctx, req.Service+"."+req.Function, trace.WithSpanKind(kind))
			if span.IsRecording() {
				span.SetAttributes(
					attribute.String("rpc.system", "fnmesh"),
					attribute.String("rpc.service", req.Service),
					attribute.String("rpc.method", req.Function),
					attribute.String("fnmesh.request_id", req.ID),
					attribute.String("fnmesh.caller", req.Caller),
					attribute.String("fnmesh.replica", req.Replica),
					attribute.Int("fnmesh.attempt", req.Attempt),
				)
			}
			out, err := next.Serve(ctx, req)
			endSpan(span, err)
			return out, err
		})
	}
}

// InstrumentClient adds the client interceptor to cfg (outermost).
func (t *Tracing) InstrumentClient(cfg *client.Config) {
	cfg.Interceptors = append([]client.Interceptor{t.ClientInterceptor()}, cfg.Interceptors...)
}

// InstrumentService adds the server interceptor to cfg (outermost).
func (t *Tracing) InstrumentService(cfg *handlers.Config) {
	cfg.Interceptors = append([]handlers.Middleware{t.ServerInterceptor()}, cfg.Interceptors...)
}

// LogHandler wraps h so that records logged with a context (InfoContext
// and the like) carry trace_id and span_id of the span in it, and, inside
// a function, request_id (the correlation id), function and caller.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ next slog.Handler }

func (l logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.next.Enabled(ctx, level)
}

func (l logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	if info := handlers.Info(ctx); info.RequestID != "" {
		r.AddAttrs(slog.String("request_id", info.RequestID), slog.String("function", info.Service+"."+info.Function))
		if info.Caller != "" {
			r.AddAttrs(slog.String("caller", info.Caller))
		}
	}
	return l.next.Handle(ctx, r)
}

func (l logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{l.next.WithAttrs(attrs)}
}
func (l logHandler) WithGroup(name string) slog.Handler { return logHandler{l.next.WithGroup(name)} }
