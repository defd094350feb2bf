package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/security"
)

// env is a gateway in front of real services on the in-memory bus (the
// same services run over Redis in integration/gateway_test.go).
type env struct {
	t       *testing.T
	srv     *httptest.Server
	gw      *gateway.Gateway
	signer  *security.Signer
	release chan struct{} // test.block returns when closed
	started chan string   // test.block and test.mail report here
}

type failIn struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type sleepIn struct {
	Ms int `json:"ms"`
}

func newEnv(t *testing.T, mod func(*gateway.Config)) *env {
	t.Helper()
	b := bus.NewMemory()
	h := meshtest.NewHarness(t, b)
	e := &env{t: t, signer: security.NewHS256Signer([]byte(examples.DemoSecret)), release: make(chan struct{}), started: make(chan string, 16)}
	h.Start(examples.Math(handlers.Config{Auth: examples.DemoVerifier(), Logger: meshtest.Quiet}))

	svc := handlers.NewService("test", handlers.Config{Auth: examples.DemoVerifier(), Logger: meshtest.Quiet})
	handlers.Register(svc, "fail", func(_ context.Context, in failIn) (struct{}, error) {
		return struct{}{}, fnmesh.NewError(fnmesh.Code(in.Code), in.Message)
	})
	handlers.Register(svc, "deadline", func(ctx context.Context, _ struct{}) (int64, error) {
		dl, _ := ctx.Deadline()
		return time.Until(dl).Milliseconds(), nil
	})
	handlers.Register(svc, "sleep", func(ctx context.Context, in sleepIn) (string, error) {
		select {
		case <-time.After(time.Duration(in.Ms) * time.Millisecond):
			return "slept", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	handlers.Register(svc, "whoami", func(ctx context.Context, _ struct{}) (map[string]any, error) {
		c, _ := security.ClaimsFromContext(ctx)
		return map[string]any{"sub": c.Subject(), "token": security.TokenFromContext(ctx) != ""}, nil
	})
	handlers.Register(svc, "echo", func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
		if len(in) == 0 {
			return json.RawMessage(`"no arguments"`), nil
		}
		return in, nil
	})
	handlers.Register(svc, "ping", func(context.Context, struct{}) (string, error) { return "pong", nil }, handlers.Public())
	handlers.Register(svc, "panic", func(context.Context, struct{}) (string, error) { panic("boom") })
	handlers.Register(svc, "block", func(ctx context.Context, _ struct{}) (string, error) {
		e.started <- "block"
		select {
		case <-e.release:
			return "released", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	handlers.Register(svc, "mail", func(_ context.Context, m examples.Mail) (struct{}, error) {
		e.started <- "mail:" + m.To
		return struct{}{}, nil
	})
	h.Start(svc)

	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	cat, err := gateway.NewStaticCatalog(append(examples.Catalog(),
		gateway.Function{Name: "test.ping", Public: true, Description: "public"})...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.Config{Client: c, Auth: examples.DemoVerifier(), Catalog: cat, Logger: meshtest.Quiet, UI: true}
	if mod != nil {
		mod(&cfg)
	}
	e.gw, err = gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.gw)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) token(sub string, roles ...string) string {
	extra := security.Claims{}
	if len(roles) > 0 {
		extra["roles"] = roles
	}
	tok, err := e.signer.Sign(sub, time.Hour, extra)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) errorBody(t *testing.T) gateway.ErrorBody {
	t.Helper()
	var b gateway.ErrorBody
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	return b
}

// post calls path with body (JSON) and the given headers ("Authorization"
// may be set through token).
func (e *env) post(path, body, token string, headers ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return e.do(req)
}

func (e *env) do(req *http.Request) response {
	e.t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{res.StatusCode, res.Header, b}
}

func (e *env) get(path string) response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	return e.do(req)
}

func TestCallReturnsTheResult(t *testing.T) {
	e := newEnv(t, nil)
	r := e.post("/v1/functions/math/add", `{"a":1,"b":2}`, e.token("ada"))
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var out examples.Result
	if err := json.Unmarshal(r.body, &out); err != nil || out.Value != 3 {
		t.Fatalf("result %s (%v)", r.body, err)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if r.header.Get(gateway.HeaderRequestID) == "" || r.header.Get(gateway.HeaderReplica) != out.Replica {
		t.Errorf("headers: request id %q, replica %q (result says %q)", r.header.Get(gateway.HeaderRequestID), r.header.Get(gateway.HeaderReplica), out.Replica)
	}
}

// Every code reaches the HTTP caller with its status, code and message.
func TestErrorsMapToStatuses(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.token("ada")
	fail := func(code string) string { return `{"code":"` + code + `","message":"m-` + code + `"}` }
	cases := []struct {
		name, path, body, token string
		status                  int
		code                    fnmesh.Code
	}{
		{"validation", "/v1/functions/math/div", `{"a":1,"b":0}`, tok, 400, fnmesh.CodeInvalidArgument},
		{"bad json for the function", "/v1/functions/math/add", `{"a":"one"}`, tok, 400, fnmesh.CodeInvalidArgument},
		{"body not json", "/v1/functions/math/add", `{a:1}`, tok, 400, fnmesh.CodeInvalidArgument},
		{"bad service name", "/v1/functions/Math!/add", `{}`, tok, 400, fnmesh.CodeInvalidArgument},
		{"no token", "/v1/functions/math/add", `{}`, "", 401, fnmesh.CodeUnauthenticated},
		{"wrong token", "/v1/functions/math/add", `{}`, tok + "x", 401, fnmesh.CodeUnauthenticated},
		{"role missing", "/v1/functions/math/stats", ``, tok, 403, fnmesh.CodePermissionDenied},
		{"no such function", "/v1/functions/math/pow", `{}`, tok, 404, fnmesh.CodeNotFound},
		{"application error", "/v1/functions/math/sqrt", `{"x":-1}`, tok, 422, "negative_input"},
		{"panic", "/v1/functions/test/panic", ``, tok, 500, fnmesh.CodeInternal},
		{"deadline", "/v1/functions/test/sleep?timeout_ms=50", `{"ms":5000}`, tok, 504, fnmesh.CodeDeadlineExceeded},
	}
	for _, code := range []fnmesh.Code{fnmesh.CodeUnavailable, fnmesh.CodeResourceExhausted, fnmesh.CodeInternal, fnmesh.CodePermissionDenied, "out_of_stock"} {
		cases = append(cases, struct {
			name, path, body, token string
			status                  int
			code                    fnmesh.Code
		}{"function returns " + string(code), "/v1/functions/test/fail", fail(string(code)), tok, gateway.HTTPStatus(code), code})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post(c.path, c.body, c.token)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			b := r.errorBody(t)
			if b.Code != c.code || b.Message == "" || b.Fields == nil {
				t.Fatalf("body %s, want code %s with a message and a fields list", r.body, c.code)
			}
			if c.path == "/v1/functions/test/fail" && c.code != fnmesh.CodeInternal && b.Message != "m-"+string(c.code) {
				t.Fatalf("message %q, want the function's", b.Message)
			}
		})
	}
	r := e.post("/v1/functions/math/div", `{"a":1,"b":0}`, tok)
	if f := r.errorBody(t).Fields; len(f) != 1 || f[0].Field != "b" || f[0].Rule != "ne" || f[0].Param != "0" {
		t.Fatalf("validation fields %+v, want b ne=0", f)
	}
}

func TestHTTPStatusOfEveryCode(t *testing.T) {
	want := map[fnmesh.Code]int{
		fnmesh.CodeInvalidArgument: 400, fnmesh.CodeUnauthenticated: 401, fnmesh.CodePermissionDenied: 403,
		fnmesh.CodeNotFound: 404, fnmesh.CodeDeadlineExceeded: 504, fnmesh.CodeUnavailable: 503,
		fnmesh.CodeResourceExhausted: 429, fnmesh.CodeInternal: 500, fnmesh.CodeCanceled: 499,
		"insufficient_funds": 422, "a.b": 422,
	}
	for code, status := range want {
		if got := gateway.HTTPStatus(code); got != status {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, status)
		}
	}
}

// The timeout a request asks for reaches the function as its deadline,
// capped by MaxTimeout.
func TestTimeoutFromRequestIsCapped(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.MaxTimeout = 2 * time.Second; c.DefaultTimeout = time.Second })
	tok := e.token("ada")
	remaining := func(path string, headers ...string) int64 {
		t.Helper()
		r := e.post(path, ``, tok, headers...)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
		var ms int64
		json.Unmarshal(r.body, &ms)
		return ms
	}
	if ms := remaining("/v1/functions/test/deadline?timeout_ms=600000"); ms > 2000 || ms < 1000 {
		t.Errorf("asked 600 s with a 2 s cap: function saw %d ms left", ms)
	}
	if ms := remaining("/v1/functions/test/deadline", gateway.HeaderTimeoutMs, "300"); ms > 300 || ms < 50 {
		t.Errorf("header asked 300 ms: function saw %d ms left", ms)
	}
	if ms := remaining("/v1/functions/test/deadline"); ms > 1000 || ms < 500 {
		t.Errorf("default 1 s: function saw %d ms left", ms)
	}
	for _, bad := range []string{"abc", "0", "-5", "1.5"} {
		r := e.post("/v1/functions/test/deadline?timeout_ms="+bad, ``, tok)
		if r.status != 400 || r.errorBody(t).Code != fnmesh.CodeInvalidArgument {
			t.Errorf("timeout_ms=%s: %d %s", bad, r.status, r.body)
		}
	}
}

func TestAsyncAnswers202AndTheFunctionRuns(t *testing.T) {
	e := newEnv(t, nil)
	for i, async := range [][]string{{"?async=1"}, {"", "Prefer", "respond-async"}} {
		to := []string{"a@b.c", "d@e.f"}[i]
		r := e.post("/v1/functions/test/mail"+async[0], `{"to":"`+to+`"}`, e.token("ada"), async[1:]...)
		if r.status != http.StatusAccepted {
			t.Fatalf("%v: status %d %s", async, r.status, r.body)
		}
		var acc gateway.Accepted
		if err := json.Unmarshal(r.body, &acc); err != nil || acc.RequestID == "" || acc.Function != "test.mail" {
			t.Fatalf("202 body %s", r.body)
		}
		if r.header.Get(gateway.HeaderRequestID) != acc.RequestID {
			t.Errorf("X-Request-Id %q, body %q", r.header.Get(gateway.HeaderRequestID), acc.RequestID)
		}
		select {
		case got := <-e.started:
			if got != "mail:"+to {
				t.Fatalf("function ran with %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the sent function did not run")
		}
	}
	// Validation of a send happens at the service: the send is still
	// accepted (it is durable), the failure is dead-lettered there.
	if r := e.post("/v1/functions/test/mail?async=1", `{"to":"not-an-email"}`, e.token("ada")); r.status != http.StatusAccepted {
		t.Fatalf("invalid send: %d", r.status)
	}
}

// The verified token travels on to the function, whose own checks apply.
func TestTokenIsForwarded(t *testing.T) {
	e := newEnv(t, nil)
	r := e.post("/v1/functions/test/whoami", ``, e.token("grace"))
	var who map[string]any
	json.Unmarshal(r.body, &who)
	if r.status != 200 || who["sub"] != "grace" || who["token"] != true {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if r := e.post("/v1/functions/math/stats", ``, e.token("root", "admin")); r.status != 200 {
		t.Fatalf("admin: %d %s", r.status, r.body)
	}

	// A gateway that does not check tokens still forwards them, and the
	// function's check refuses a bad one.
	open := newEnv(t, func(c *gateway.Config) { c.Auth, c.AllowUnauthenticated = nil, true })
	r = open.post("/v1/functions/test/whoami", ``, "not-a-jwt")
	if r.status != 401 || !strings.Contains(r.errorBody(t).Message, "malformed") {
		t.Fatalf("function-side check: %d %s", r.status, r.body)
	}
	if r := open.post("/v1/functions/test/ping", ``, ""); r.status != 200 {
		t.Fatalf("public function through an open gateway: %d %s", r.status, r.body)
	}
}

// An Idempotency-Key header reaches the mesh: a repeated request is not
// run again and gets the first result; the key with other arguments is
// refused.
func TestIdempotencyKeyHeader(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.token("ada")
	first := e.post("/v1/functions/math/add", `{"a":1,"b":2}`, tok, gateway.HeaderIdempotencyKey, "order-7")
	again := e.post("/v1/functions/math/add", `{"a":1,"b":2}`, tok, gateway.HeaderIdempotencyKey, "order-7")
	if first.status != 200 || again.status != 200 || !bytes.Equal(first.body, again.body) {
		t.Fatalf("first %d %s, repeat %d %s: want the first result twice", first.status, first.body, again.status, again.body)
	}
	if r := e.post("/v1/functions/math/add", `{"a":5,"b":5}`, tok, gateway.HeaderIdempotencyKey, "order-7"); r.status != 400 || !strings.Contains(r.errorBody(t).Message, "different arguments") {
		t.Fatalf("the key with other arguments: %d %s, want 400 saying the key was used with different arguments", r.status, r.body)
	}
	if other := e.post("/v1/functions/math/add", `{"a":5,"b":5}`, tok, gateway.HeaderIdempotencyKey, "order-8"); !strings.Contains(string(other.body), `"value":10`) {
		t.Fatalf("another key: %s", other.body)
	}
}

func TestPublicFunctionNeedsNoToken(t *testing.T) {
	e := newEnv(t, nil)
	if r := e.post("/v1/functions/test/ping", ``, ""); r.status != 200 || string(bytes.TrimSpace(r.body)) != `"pong"` {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// A token that is sent is still checked.
	if r := e.post("/v1/functions/test/ping", ``, "garbage"); r.status != 401 {
		t.Fatalf("bad token on a public function: %d %s", r.status, r.body)
	}
}

func TestCatalogOnly(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.CatalogOnly = true })
	tok := e.token("ada")
	if r := e.post("/v1/functions/test/whoami", ``, tok); r.status != 404 || r.errorBody(t).Code != fnmesh.CodeNotFound {
		t.Fatalf("unlisted: %d %s", r.status, r.body)
	}
	if r := e.post("/v1/functions/math/add", `{"a":1,"b":1}`, tok); r.status != 200 {
		t.Fatalf("listed: %d %s", r.status, r.body)
	}
}

func TestBodyRules(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.MaxBodyBytes = 64 })
	tok := e.token("ada")
	big := `{"pad":"` + strings.Repeat("x", 100) + `"}`
	if r := e.post("/v1/functions/test/echo", big, tok); r.status != 400 || !strings.Contains(r.errorBody(t).Message, "limit") {
		t.Fatalf("large body: %d %s", r.status, r.body)
	}
	// Without Content-Length (chunked), the limit still holds.
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/functions/test/echo", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	if r := e.do(req); r.status != 400 {
		t.Fatalf("large chunked body: %d %s", r.status, r.body)
	}
	if r := e.post("/v1/functions/test/echo", `{"a":1}`, tok, "Content-Type", "text/plain"); r.status != 400 || !strings.Contains(r.errorBody(t).Message, "application/json") {
		t.Fatalf("text/plain: %d %s", r.status, r.body)
	}
	if r := e.post("/v1/functions/test/echo", ``, tok); r.status != 200 || !strings.Contains(string(r.body), "no arguments") {
		t.Fatalf("empty body: %d %s", r.status, r.body)
	}
	if r := e.post("/v1/functions/test/echo", `{"a":[1,2]}`, tok); r.status != 200 || string(bytes.TrimSpace(r.body)) != `{"a":[1,2]}` {
		t.Fatalf("echo: %d %s", r.status, r.body)
	}
}

func TestCORS(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.CORSOrigins = []string{"https://app.example.com"} })
	preflight := func(origin string) response {
		req, _ := http.NewRequest(http.MethodOptions, e.srv.URL+"/v1/functions/math/add", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		return e.do(req)
	}
	r := preflight("https://app.example.com")
	if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(r.header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("allowed preflight: %d %v", r.status, r.header)
	}
	if r := preflight("https://evil.example.com"); r.status != 403 || r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("refused preflight: %d %v", r.status, r.header)
	}
	tok := e.token("ada")
	r = e.post("/v1/functions/math/add", `{"a":1,"b":1}`, tok, "Origin", "https://app.example.com")
	if r.status != 200 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(r.header.Get("Access-Control-Expose-Headers"), gateway.HeaderRequestID) {
		t.Fatalf("allowed call: %d %v", r.status, r.header)
	}
	if r := e.post("/v1/functions/test/mail?async=1", `{"to":"x@y.z"}`, tok, "Origin", "https://evil.example.com"); r.status != 403 || r.errorBody(t).Code != fnmesh.CodePermissionDenied {
		t.Fatalf("refused call: %d %s", r.status, r.body)
	}
	select {
	case got := <-e.started:
		t.Fatalf("a refused origin's call ran: %s", got)
	default:
	}
	// The gateway's own page is same-origin.
	if r := e.post("/v1/functions/math/add", `{"a":1,"b":1}`, tok, "Origin", e.srv.URL); r.status != 200 {
		t.Fatalf("same origin: %d %s", r.status, r.body)
	}
}

func TestRateLimitPerSubjectAndPerIP(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) { c.RateLimit, c.RateBurst = 0.01, 2 })
	ada, bob := e.token("ada"), e.token("bob")
	for i := 0; i < 2; i++ {
		if r := e.post("/v1/functions/math/add", `{"a":1,"b":1}`, ada); r.status != 200 {
			t.Fatalf("call %d within the burst: %d %s", i, r.status, r.body)
		}
	}
	r := e.post("/v1/functions/math/add", `{"a":1,"b":1}`, ada)
	if r.status != 429 || r.errorBody(t).Code != fnmesh.CodeResourceExhausted || r.header.Get("Retry-After") == "" {
		t.Fatalf("over the limit: %d %s %v", r.status, r.body, r.header)
	}
	if r := e.post("/v1/functions/math/add", `{"a":1,"b":1}`, bob); r.status != 200 {
		t.Fatalf("another subject: %d %s", r.status, r.body)
	}
	// Without a token, the client IP is the key.
	for i := 0; i < 2; i++ {
		e.post("/v1/functions/test/ping", ``, "")
	}
	if r := e.post("/v1/functions/test/ping", ``, ""); r.status != 429 {
		t.Fatalf("per IP: %d %s", r.status, r.body)
	}
}

func TestHealthMetricsAndUI(t *testing.T) {
	e := newEnv(t, nil)
	if r := e.get("/healthz"); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	tok := e.token("ada")
	e.post("/v1/functions/math/add", `{"a":1,"b":1}`, tok)
	e.post("/v1/functions/math/sqrt", `{"x":-1}`, tok)
	e.post("/v1/functions/nosuch/fn"+strings.Repeat("x", 3), `{}`, tok, gateway.HeaderTimeoutMs, "20")
	m := string(e.get("/metrics").body)
	for _, want := range []string{
		`fnmesh_gateway_requests_total{code="ok",function="math.add"} 1`,
		`fnmesh_gateway_requests_total{code="negative_input",function="math.sqrt"} 1`,
		// An unknown service fails at once (the client's registry check).
		`fnmesh_gateway_requests_total{code="not_found",function="other"} 1`,
		`fnmesh_gateway_request_duration_seconds_count{function="math.add"} 1`,
		`fnmesh_gateway_requests_in_flight 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(m)
	}
	page := e.get("/ui/")
	if page.status != 200 || !strings.Contains(string(page.body), `data-testid="call"`) || page.header.Get("Content-Security-Policy") == "" {
		t.Fatalf("ui: %d %v", page.status, page.header)
	}
	if r := e.get("/ui/app.js"); r.status != 200 || !strings.Contains(string(r.body), "/v1/functions") {
		t.Fatalf("app.js: %d", r.status)
	}
	var list gateway.CatalogFile
	if err := json.Unmarshal(e.get("/v1/functions").body, &list); err != nil || len(list.Functions) != len(examples.Catalog())+1 {
		t.Fatalf("listing: %v %+v", err, list)
	}
	if r := e.get("/v1/nothing"); r.status != 404 || r.errorBody(t).Code != fnmesh.CodeNotFound {
		t.Fatalf("unknown route: %d %s", r.status, r.body)
	}
}

// Serve stops gracefully: the call in flight when the context ends gets
// its result, /healthz turns 503, and Serve returns nil.
func TestServeDrainsRunningCalls(t *testing.T) {
	e := newEnv(t, func(c *gateway.Config) {
		c.ShutdownTimeout = 10 * time.Second
		c.ShutdownDelay = 200 * time.Millisecond
	})
	ln, err := listenLoopback()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.gw.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()

	result := make(chan response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/functions/test/block", nil)
		req.Header.Set("Authorization", "Bearer "+e.token("ada"))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			result <- response{status: -1, body: []byte(err.Error())}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		result <- response{status: res.StatusCode, body: b}
	}()
	select {
	case <-e.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the call did not reach the function")
	}
	cancel()
	// During ShutdownDelay the gateway still answers, with /healthz 503.
	deadline := time.Now().Add(5 * time.Second)
	for !e.gw.Draining() {
		if time.Now().After(deadline) {
			t.Fatal("gateway not draining")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if res, err := http.Get(base + "/healthz"); err != nil || res.StatusCode != 503 {
		t.Fatalf("healthz while draining: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	close(e.release)
	r := <-result
	if r.status != 200 || !strings.Contains(string(r.body), "released") {
		t.Fatalf("call in flight at shutdown: %d %s", r.status, r.body)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestConfigValidation(t *testing.T) {
	_, err := gateway.New(gateway.Config{})
	for _, want := range []string{"Client", "Auth"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("empty config: %v, want it to name %s", err, want)
		}
	}
	c, _ := client.New(bus.NewMemory(), client.Config{})
	defer c.Close()
	_, err = gateway.New(gateway.Config{Client: c, AllowUnauthenticated: true, DefaultTimeout: time.Minute, MaxTimeout: time.Second,
		CORSOrigins: []string{"app.example.com"}})
	for _, want := range []string{"DefaultTimeout", "CORSOrigins"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad config: %v, want it to name %s", err, want)
		}
	}
	if _, err := gateway.NewStaticCatalog(gateway.Function{Name: "nodot"}, gateway.Function{Name: "a.b", Request: json.RawMessage(`[1]`)}); err == nil ||
		!strings.Contains(err.Error(), "nodot") || !strings.Contains(err.Error(), "a.b") {
		t.Errorf("bad catalog: %v", err)
	}
	var fe *fnmesh.Error
	if errors.As(err, &fe) {
		t.Errorf("config errors are plain errors, got %v", fe)
	}
}
