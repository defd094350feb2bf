package handlers

import (
	"context"
	"reflect"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/jsondec"
	"github.com/fnmesh/fnmesh/security"
)

// Request is one call of a function as middleware sees it. It hides the
// transport: no stream ids, no message types.
type Request struct {
	ID       string    // correlation id
	Service  string    // e.g. "math"
	Function string    // e.g. "add"
	Payload  []byte    // JSON arguments as sent
	Token    string    // caller's token, "" if none
	Caller   string    // caller's name, may be ""
	Deadline time.Time // zero when the caller set none
	Async    bool      // sent with Send: nobody waits for the result
	decoded  bool      // Arg ran (here, not below: a Request fits 512 bytes)
	ran      bool      // the first run began
	Attempt  int       // 1 on the first run of this request
	Replica  string    // replica running it
	// TraceParent is the caller's W3C traceparent, "" if none.
	TraceParent string
	// IdempotencyKey is the caller's key for this request, "" if none.
	IdempotencyKey string

	fn     *function
	idem   *idemRun // set by the path that dispatches a request with a key
	arg    any
	argErr error

	// The request as it came (read from the bus, or the in-process
	// caller's, which outlives the run), and the context of its first
	// run, kept in the Request so that a request is one allocation.
	wire     *bus.Request
	firstRun callContext
}

// Arg decodes the payload into the function's argument type, once, and
// returns a pointer to it (*In for a function taking In).
func (r *Request) Arg() (any, error) {
	if r.decoded {
		return r.arg, r.argErr
	}
	r.decoded = true
	r.arg = r.fn.newArg()
	if r.wire != nil && r.wire.Value != nil && r.fn.argPlain && r.fn.setArg(r.arg, r.wire.Value) {
		return r.arg, nil // in-process: the caller's value, as JSON would give it
	}
	if len(r.Payload) > 0 {
		if err := jsondec.Unmarshal(r.Payload, r.arg); err != nil {
			r.argErr = fnmesh.Errorf(fnmesh.CodeInvalidArgument, "arguments of %s.%s are not valid JSON for %s: %v", r.Service, r.Function, r.fn.inType, err)
		}
	}
	return r.arg, r.argErr
}

// Handler serves one request and returns the function's result.
type Handler interface {
	Serve(ctx context.Context, req *Request) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) (any, error)

// Serve implements Handler.
func (f HandlerFunc) Serve(ctx context.Context, req *Request) (any, error) { return f(ctx, req) }

// Middleware wraps a Handler.
type Middleware func(Handler) Handler

// function is one registered function.
type function struct {
	name     string
	inType   reflect.Type
	outType  reflect.Type
	newArg   func() any
	call     func(ctx context.Context, arg any) (any, error)
	public   bool
	requires []func(ctx context.Context, c security.Claims) error
	retry    *RetryPolicy
	inline   bool    // co-located calls run on the caller's goroutine
	handler  Handler // the full chain, built by Run

	// In-process calls pass arguments and results as Go values when
	// their types survive a JSON round trip unchanged (plainType).
	setArg             func(dst, v any) bool // *dst.(*In) = v.(In)
	argPlain, outPlain bool
}

// FunctionOption configures one registered function.
type FunctionOption func(*function)

// Public lets callers without a token call the function even when the
// service checks tokens. Use it for health checks and public lookups.
func Public() FunctionOption { return func(f *function) { f.public = true } }

// RequireRole admits only callers whose token lists role in its "roles"
// (or "role") claim; others get permission_denied.
func RequireRole(role string) FunctionOption {
	return RequireClaims(func(_ context.Context, c security.Claims) error {
		if !c.HasRole(role) {
			return fnmesh.Errorf(fnmesh.CodePermissionDenied, "role %q required", role)
		}
		return nil
	})
}

// RequireClaims admits only callers for whose claims check returns nil.
// An error without a code becomes permission_denied.
func RequireClaims(check func(ctx context.Context, c security.Claims) error) FunctionOption {
	return func(f *function) { f.requires = append(f.requires, check) }
}

// WithRetry overrides the service's retry policy for this function's
// Send requests.
func WithRetry(p RetryPolicy) FunctionOption {
	return func(f *function) { f.retry = &p }
}

// Inline runs the function's co-located calls on the caller's own
// goroutine, as a plain Go function call, instead of on a replica worker
// (calls over the bus are not affected). Give it to a function that
// returns promptly, and promptly once its context ends: in exchange for
// less cost per call (no hand-off to a worker and back), its co-located
// caller waits for it to return, also past the call's deadline. Every
// other step is the same: token check, access rules, validation, the
// deadline as the context's deadline, panics as internal, metrics and
// traces, idempotency keys, Info. See docs/PLACEMENT.md.
func Inline() FunctionOption { return func(f *function) { f.inline = true } }

// Register adds fn to s under name. In and Out are JSON-encoded on the
// wire; In's validator tags are checked before fn runs. Registering after
// Run has started, or a name twice, makes Run fail.
func Register[In, Out any](s *Service, name string, fn func(ctx context.Context, in In) (Out, error), opts ...FunctionOption) {
	f := &function{
		name:    name,
		inType:  reflect.TypeFor[In](),
		outType: reflect.TypeFor[Out](),
		newArg:  func() any { return new(In) },
		call: func(ctx context.Context, arg any) (any, error) {
			return fn(ctx, *arg.(*In))
		},
		setArg: func(dst, v any) bool {
			in, ok := v.(In)
			if ok {
				*dst.(*In) = in
			}
			return ok
		},
		argPlain: plainType(reflect.TypeFor[In]()),
		outPlain: plainType(reflect.TypeFor[Out]()),
	}
	for _, o := range opts {
		o(f)
	}
	s.add(f)
}

// CallInfo describes the call a function is serving.
type CallInfo struct {
	Service, Function, RequestID, Caller, Replica string
	Async                                         bool
	Attempt                                       int
	// IdempotencyKey is the caller's key, "" if none. A function whose
	// effect must happen once even if its replica dies right after it
	// (before fnmesh records the success) makes the effect conditional on
	// this key, e.g. an insert that ignores a key already present.
	IdempotencyKey string
}

type callInfoKey struct{}

// Info returns the CallInfo of the running call.
func Info(ctx context.Context) CallInfo {
	if c, ok := ctx.(*callContext); ok {
		return c.info()
	}
	if i, _ := ctx.Value(callInfoKey{}).(*CallInfo); i != nil {
		return *i
	}
	return CallInfo{}
}
