package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/security"
)

// idemRun is what the idempotency step of a function's chain needs from
// the path that dispatches the request, and what it leaves for that path
// to settle once the outcome is known.
type idemRun struct {
	ctx    context.Context // for the store: outlives the call's deadline
	store  bus.IdempotencyStore
	owner  string // id of the request entry running the key
	window time.Duration

	key  string // the stored key: function, subject and caller's key, hashed
	args string // hash of the arguments the key was first used with
	held bool   // this request holds the key: complete or release it
}

// errIdemStore reports an idempotency store that did not answer: the
// request is not answered but delivered again.
var errIdemStore = errors.New("idempotency store unavailable")

// idempotency runs a request that carries an idempotency key at most once
// per key. It sits after the token check, the access rule, the
// function's own requirements and the service's Use middleware, so a
// stored result is only handed to a caller who may call the function. A key is scoped to the function
// (name and version) and to the verified subject of the caller's token:
// the same key on another function, or from another subject, is another
// key. A key reused with other arguments is refused with
// invalid_argument.
func idempotency(service string) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			if req.IdempotencyKey == "" {
				return next.Serve(ctx, req)
			}
			g := req.idem
			if g != nil && g.held { // a retry of the run that holds the key
				return next.Serve(ctx, req)
			}
			if g == nil || g.store == nil {
				return nil, fnmesh.Errorf(fnmesh.CodeInternal, "%s.%s: idempotency key sent on a path that keeps no idempotency store", service, req.Function)
			}
			var subject string
			if claims, ok := security.ClaimsFromContext(ctx); ok {
				subject = claims.Subject()
			}
			g.key = idemScope(req.Function, subject, req.IdempotencyKey)
			g.args = argsHash(req.Payload)
			state, prior, err := g.store.Begin(g.ctx, service, g.key, g.owner, g.window)
			if err != nil {
				return nil, errors.Join(errIdemStore, err)
			}
			switch state {
			case bus.IdemDone:
				sum, result, _ := strings.Cut(string(prior), "|")
				if sum != g.args {
					return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument,
						"idempotency key %q was already used with different arguments for %s.%s: use a new key for new arguments", req.IdempotencyKey, service, req.Function)
				}
				if req.Async || result == "" {
					return nil, nil
				}
				return json.RawMessage(result), nil
			case bus.IdemRunning:
				if req.Async {
					return nil, nil // the running request is the one that counts
				}
				return nil, fnmesh.Errorf(fnmesh.CodeUnavailable, "a request with idempotency key %q is running; try again for its result", req.IdempotencyKey)
			}
			g.held = true
			return next.Serve(ctx, req)
		})
	}
}

// settle records the outcome of a request that holds its key: done with
// its result (so a repeat gets it), or freed after a failure (so a repeat
// runs). A path that dispatches requests calls it before it tells the
// caller the outcome.
func (g *idemRun) settle(service string, log *slog.Logger, ok bool, result []byte) {
	if !g.held {
		return
	}
	if !ok {
		if err := g.store.Release(g.ctx, service, g.key, g.owner); err != nil {
			log.Warn("could not free an idempotency key; it expires with the window", "err", err)
		}
		return
	}
	v := make([]byte, 0, len(g.args)+1+len(result))
	v = append(append(append(v, g.args...), '|'), result...)
	if err := g.store.Complete(g.ctx, service, g.key, g.owner, v, g.window); err != nil {
		log.Error("could not record an idempotency key as done", "err", err)
	}
}

// idemScope is the stored name of a caller's idempotency key: the
// hex SHA-256 of the function's name (with its version), the length of
// the caller's verified subject, the subject and the key. See
// docs/PROTOCOL.md, "Idempotency keys".
func idemScope(function, subject, key string) string {
	h := sha256.New()
	h.Write([]byte(function))
	h.Write([]byte{'\n'})
	h.Write(strconv.AppendInt(nil, int64(len(subject)), 10))
	h.Write([]byte{'\n'})
	h.Write([]byte(subject))
	h.Write([]byte(key))
	return hex.EncodeToString(h.Sum(nil))
}

// argsHash is the hex SHA-256 of the arguments as sent.
func argsHash(payload []byte) string {
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:])
}
