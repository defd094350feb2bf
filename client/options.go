package client

import (
	"context"
	"time"

	"github.com/fnmesh/fnmesh/security"
)

// CallOption adjusts one Call or Send.
type CallOption func(*callOptions)

type callOptions struct {
	timeout        time.Duration
	token          string
	asService      bool // send Config.Token, whatever came before
	requestID      string
	idempotencyKey string
	info           *ReplyInfo
}

// WithTimeout bounds a Call: the caller gets deadline_exceeded when no
// result arrived in time, and a replica that picks the request up later
// does not run it. On Send it bounds how long the request may wait to be
// run; past it, the request goes to the dead-letter stream unrun.
func WithTimeout(d time.Duration) CallOption { return func(o *callOptions) { o.timeout = d } }

// WithToken sends token instead of the client's default token.
func WithToken(token string) CallOption { return func(o *callOptions) { o.token = token } }

// ForwardToken sends the token of the call being served in ctx (inside a
// function), so the callee sees the original caller. Without it, a
// function calls others with its client's own token.
func ForwardToken(ctx context.Context) CallOption {
	return WithToken(security.TokenFromContext(ctx))
}

// AsService sends the client's own token (Config.Token): the callee sees
// the calling service, not the caller it serves. It is the default; say
// it at a call site inside a function to make the choice visible next to
// ForwardToken.
func AsService() CallOption { return func(o *callOptions) { o.asService = true } }

// WithRequestID sets the request's id instead of a generated one. Ids must
// be unique per client.
func WithRequestID(id string) CallOption { return func(o *callOptions) { o.requestID = id } }

// ReplyInfo tells which replica answered a call.
type ReplyInfo struct {
	RequestID string
	Replica   string
}

// WithReplyInfo fills info when the call returns.
func WithReplyInfo(info *ReplyInfo) CallOption { return func(o *callOptions) { o.info = info } }

// WithIdempotencyKey marks a Send (or Call) so that, within the service's
// idempotency window, a second request with the same key is not run
// again, even across replicas and redeliveries.
func WithIdempotencyKey(key string) CallOption {
	return func(o *callOptions) { o.idempotencyKey = key }
}
