package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/security"
)

// Gateway is an http.Handler that turns HTTP requests into function
// calls:
//
//	POST /v1/functions/{service}/{function}   call (or send, with ?async=1)
//	GET  /v1/functions                        the catalog, with schemas
//	GET  /v1/requests/{id}                    where a sent request stands
//	GET  /openapi.json                        OpenAPI 3.1 of the catalog
//	GET  /healthz, /metrics                   health, Prometheus metrics
//	GET  /ui/                                 the function browser (Config.UI)
type Gateway struct {
	cfg      Config
	mux      *http.ServeMux
	cors     *cors
	limits   *limiters
	metrics  *metrics
	draining atomic.Bool
}

// New returns a gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg: cfg, mux: http.NewServeMux(), cors: newCORS(cfg.CORSOrigins),
		limits: newLimiters(cfg.RateLimit, cfg.RateBurst), metrics: newMetrics(),
	}
	g.mux.Handle("POST /v1/functions/{service}/{function}", g.cors.wrap(http.HandlerFunc(g.serveCall)))
	g.mux.Handle("OPTIONS /v1/functions/{service}/{function}", g.cors.wrap(http.HandlerFunc(allowOptions)))
	g.mux.Handle("GET /v1/functions", g.cors.wrap(http.HandlerFunc(g.serveList)))
	g.mux.Handle("OPTIONS /v1/functions", g.cors.wrap(http.HandlerFunc(allowOptions)))
	g.mux.Handle("GET /v1/requests/{id}", g.cors.wrap(http.HandlerFunc(g.serveRequest)))
	g.mux.Handle("GET /openapi.json", g.cors.wrap(http.HandlerFunc(g.serveOpenAPI)))
	g.mux.HandleFunc("GET /healthz", g.serveHealth)
	g.mux.Handle("GET /metrics", g.metrics.handler())
	if cfg.UI {
		g.mountUI()
	}
	g.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fnmesh.Errorf(fnmesh.CodeNotFound, "no route %s %s; functions are called with POST /v1/functions/{service}/{function}", r.Method, r.URL.Path), "")
	})
	return g, nil
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	g.mux.ServeHTTP(w, r)
}

func allowOptions(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Allow", "GET, POST, OPTIONS")
	w.WriteHeader(http.StatusNoContent)
}

func (g *Gateway) serveHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if g.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "draining")
		return
	}
	fmt.Fprintln(w, "ok")
}

func (g *Gateway) serveList(w http.ResponseWriter, r *http.Request) {
	fns, err := g.cfg.Catalog.Functions(r.Context())
	if err != nil {
		writeError(w, fnmesh.Errorf(fnmesh.CodeUnavailable, "catalog: %v", err), "")
		return
	}
	if fns == nil {
		fns = []Function{}
	}
	writeJSON(w, http.StatusOK, CatalogFile{Functions: fns})
}

// Accepted is the body of a 202 answer to an async request.
type Accepted struct {
	RequestID string `json:"request_id"`
	Function  string `json:"function"`
}

// serveCall is POST /v1/functions/{service}/{function}.
func (g *Gateway) serveCall(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	g.metrics.inFlight.Inc()
	defer g.metrics.inFlight.Dec()
	function := r.PathValue("service") + "." + r.PathValue("function")
	out := g.call(w, r, function)
	if out.code == "" {
		out.code = "ok"
	}
	g.metrics.observe(g.metrics.label(function, out.listed, out.answered), string(out.code), time.Since(start))
	level := g.cfg.Logger.Debug
	if HTTPStatus(out.code) >= 500 && out.code != "ok" && out.code != "accepted" {
		level = g.cfg.Logger.Warn
	}
	level("gateway request", "function", function, "code", out.code, "id", out.requestID, "ms", time.Since(start).Milliseconds())
}

type outcome struct {
	code      fnmesh.Code
	requestID string
	listed    bool // the catalog lists the function
	answered  bool // a replica answered (or the send was queued)
}

func (g *Gateway) call(w http.ResponseWriter, r *http.Request, function string) (out outcome) {
	fail := func(err error) outcome {
		if fnmesh.CodeOf(err) == fnmesh.CodeInternal {
			g.cfg.Logger.Error("internal error; callers get a generic message", "function", function, "id", out.requestID, "err", err)
		}
		out.code = writeError(w, err, out.requestID)
		return out
	}
	if _, _, err := client.SplitName(function); err != nil {
		return fail(err)
	}
	f, listed, err := g.cfg.Catalog.Function(r.Context(), function)
	if err != nil {
		return fail(fnmesh.Errorf(fnmesh.CodeUnavailable, "catalog: %v", err))
	}
	out.listed = listed
	if !listed && g.cfg.CatalogOnly {
		return fail(fnmesh.Errorf(fnmesh.CodeNotFound, "function %s not found", function))
	}

	token, err := bearer(r)
	if err != nil {
		return fail(err)
	}
	var claims security.Claims
	if g.cfg.Auth != nil && !(token == "" && f.Public) {
		if token == "" {
			return fail(fnmesh.NewError(fnmesh.CodeUnauthenticated, "missing token: send Authorization: Bearer TOKEN"))
		}
		claims, err = g.cfg.Auth.Verify(r.Context(), token)
		if err != nil {
			if fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
				err = fnmesh.Wrap(fnmesh.CodeUnauthenticated, err)
			}
			return fail(err)
		}
	}
	key := "ip:" + clientIP(r, g.cfg.TrustForwardedFor)
	if sub := claims.Subject(); sub != "" {
		key = "sub:" + sub
	}
	if ok, wait := g.limits.allow(key, time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		return fail(fnmesh.Errorf(fnmesh.CodeResourceExhausted, "rate limit of %g requests per second exceeded; retry in %v", g.cfg.RateLimit, wait.Round(time.Millisecond)))
	}

	args, err := g.readArgs(w, r)
	if err != nil {
		return fail(err)
	}
	timeout, explicit, err := g.timeout(r)
	if err != nil {
		return fail(err)
	}
	var info client.ReplyInfo
	opts := []client.CallOption{client.WithToken(token), client.WithReplyInfo(&info)}
	if key := r.Header.Get(HeaderIdempotencyKey); key != "" {
		opts = append(opts, client.WithIdempotencyKey(key))
	}

	if isAsync(r) {
		if explicit {
			opts = append(opts, client.WithTimeout(timeout))
		}
		if err := g.cfg.Client.Send(r.Context(), function, args, opts...); err != nil {
			return fail(err)
		}
		out.requestID, out.answered, out.code = info.RequestID, true, "accepted"
		w.Header().Set(HeaderRequestID, info.RequestID)
		writeJSON(w, http.StatusAccepted, Accepted{RequestID: info.RequestID, Function: function})
		return out
	}

	var result json.RawMessage
	err = g.cfg.Client.Call(r.Context(), function, args, &result, append(opts, client.WithTimeout(timeout))...)
	out.requestID = info.RequestID
	out.answered = info.Replica != ""
	if info.RequestID != "" {
		w.Header().Set(HeaderRequestID, info.RequestID)
	}
	if info.Replica != "" {
		w.Header().Set(HeaderReplica, info.Replica)
	}
	if err != nil {
		return fail(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(result, '\n'))
	return out
}

// bearer returns the request's bearer token, "" if it sent none.
func bearer(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", nil
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", fnmesh.NewError(fnmesh.CodeUnauthenticated, "Authorization header must be \"Bearer TOKEN\"")
	}
	return strings.TrimSpace(token), nil
}

// readArgs reads the JSON body, at most MaxBodyBytes. An empty body means
// no arguments.
func (g *Gateway) readArgs(w http.ResponseWriter, r *http.Request) (json.RawMessage, error) {
	if r.ContentLength > g.cfg.MaxBodyBytes {
		return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "body of %d bytes exceeds the limit of %d", r.ContentLength, g.cfg.MaxBodyBytes)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "body exceeds the limit of %d bytes", g.cfg.MaxBodyBytes)
		}
		return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "reading the body: %v", err)
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return json.RawMessage{}, nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return nil, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "Content-Type %q: send application/json", ct)
		}
	} else {
		return nil, fnmesh.NewError(fnmesh.CodeInvalidArgument, "missing Content-Type: send application/json")
	}
	if !json.Valid(body) {
		return nil, fnmesh.NewError(fnmesh.CodeInvalidArgument, "body is not valid JSON")
	}
	return body, nil
}

// timeout reads the request's timeout (timeout_ms query parameter, else
// the X-Fnmesh-Timeout-Ms header), capped by MaxTimeout; explicit is false
// when the request gave none and DefaultTimeout applies.
func (g *Gateway) timeout(r *http.Request) (d time.Duration, explicit bool, err error) {
	v := r.URL.Query().Get("timeout_ms")
	if v == "" {
		v = r.Header.Get(HeaderTimeoutMs)
	}
	if v == "" {
		return g.cfg.DefaultTimeout, false, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return 0, false, fnmesh.Errorf(fnmesh.CodeInvalidArgument, "timeout %q: want a positive whole number of milliseconds", v)
	}
	d = g.cfg.MaxTimeout
	if ms < d.Milliseconds() {
		d = time.Duration(ms) * time.Millisecond
	}
	return d, true, nil
}

// isAsync reports whether the request asks to be sent fire-and-forget:
// ?async=1 (or true), or the header Prefer: respond-async (RFC 7240).
func isAsync(r *http.Request) bool {
	switch strings.ToLower(r.URL.Query().Get("async")) {
	case "1", "true", "yes":
		return true
	}
	for _, p := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(p, ",") {
			if strings.EqualFold(strings.TrimSpace(part), "respond-async") {
				return true
			}
		}
	}
	return false
}

// Draining reports whether Serve is shutting down (/healthz answers 503).
func (g *Gateway) Draining() bool { return g.draining.Load() }
