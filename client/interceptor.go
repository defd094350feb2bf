package client

import (
	"context"
	"encoding/json"
	"time"

	"github.com/fnmesh/fnmesh/bus"
)

// Invocation is one Call or Send as interceptors see it. Interceptors may
// change the fields marked so before calling on.
type Invocation struct {
	ID             string          // request id (correlation id of a call)
	Function       string          // "math.add"
	Service        string          // "math"
	Name           string          // "add"
	Args           json.RawMessage // JSON arguments
	Token          string          // may be changed
	TraceParent    string          // W3C traceparent sent with the request; may be set
	IdempotencyKey string          // may be empty
	Deadline       time.Time       // zero for a Send without WithTimeout
	Async          bool            // a Send
	// argsBorrowed: Args are the caller's own bytes (json.RawMessage or
	// []byte), which an in-process replica must copy. (Here, in Async's
	// padding: an Invocation fits 416 bytes.)
	argsBorrowed bool
	// inProcess: a replica in this process took the request (and copied
	// it, or ran it before Dispatch returned).
	inProcess bool
	Replica   string // set once a reply arrived: who ran it

	// wire is the request the innermost invoker sends, kept here so that
	// a call is one allocation less. An Invocation is used by one
	// goroutine at a time (an interceptor that retries calls next again
	// after it returned).
	wire bus.Request
	// argValue is the Go argument, resultValue the Go result of a call
	// answered in-process (bus.Request.Value, bus.Reply.Value).
	argValue, resultValue any
	allowed               time.Duration // the time a Call was given, for the breaker
}

// Invoker carries an invocation on and returns the JSON result (nil for a
// Send).
type Invoker func(ctx context.Context, inv *Invocation) (json.RawMessage, error)

// Interceptor wraps an Invoker, like net/http middleware.
type Interceptor func(next Invoker) Invoker
