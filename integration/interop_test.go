package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/security"
)

var demoSigner = security.NewHS256Signer([]byte(examples.DemoSecret))

func demoToken(t testing.TB, sub string, roles ...string) string {
	t.Helper()
	extra := security.Claims{}
	if len(roles) > 0 {
		extra["roles"] = roles
	}
	tok, err := demoSigner.Sign(sub, time.Hour, extra)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A Go caller calls functions served by a Node replica: results, the
// Node side's errors and its token checks arrive with their codes.
func TestGoCallerNodeReplica(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("nodesvc")
	startNodeReplica(t, service, "node-1", "--secret", examples.DemoSecret)
	c := newClient(t, client.Config{Token: demoToken(t, "ada")})
	ctx := context.Background()

	var sum examples.Result
	var info client.ReplyInfo
	if err := c.Call(ctx, service+".add", examples.AddIn{A: 1, B: 2}, &sum, client.WithReplyInfo(&info)); err != nil {
		t.Fatal(err)
	}
	if sum.Value != 3 || sum.Replica != "node-1" || info.Replica != "node-1" {
		t.Fatalf("add: %+v, answered by %q", sum, info.Replica)
	}

	err := c.Call(ctx, service+".fail", map[string]string{"code": "out_of_stock", "message": "no more widgets"}, nil)
	fe := meshtest.WantCode(t, err, "out_of_stock")
	if fe.Message != "no more widgets" {
		t.Errorf("application error message %q", fe.Message)
	}
	if !errors.Is(err, &fnmesh.Error{Code: "out_of_stock"}) {
		t.Errorf("errors.Is does not match the application code")
	}
	meshtest.WantCode(t, c.Call(ctx, service+".boom", nil, nil), fnmesh.CodeInternal)
	fe = meshtest.WantCode(t, c.Call(ctx, service+".div", examples.DivIn{A: 1, B: 0}, nil), fnmesh.CodeInvalidArgument)
	if len(fe.Fields) != 1 || fe.Fields[0] != (fnmesh.FieldViolation{Field: "b", Rule: "ne", Param: "0"}) {
		t.Errorf("validation fields from Node: %+v", fe.Fields)
	}
	meshtest.WantCode(t, c.Call(ctx, service+".pow", nil, nil), fnmesh.CodeNotFound)
	if !errors.Is(c.Call(ctx, service+".pow", nil, nil), fnmesh.ErrNotFound) {
		t.Error("errors.Is(err, ErrNotFound) fails for a Node replica's not_found")
	}

	// Tokens: checked by the Node replica with the Go signer's secret.
	var me struct{ Sub string }
	if err := c.Call(ctx, service+".me", nil, &me); err != nil || me.Sub != "ada" {
		t.Fatalf("me: %+v %v", me, err)
	}
	meshtest.WantCode(t, c.Call(ctx, service+".me", nil, nil, client.WithToken("")), fnmesh.CodeUnauthenticated)
	meshtest.WantCode(t, c.Call(ctx, service+".me", nil, nil, client.WithToken(demoToken(t, "ada")+"x")), fnmesh.CodeUnauthenticated)
	meshtest.WantCode(t, c.Call(ctx, service+".admin", nil, nil), fnmesh.CodePermissionDenied)
	if err := c.Call(ctx, service+".admin", nil, nil, client.WithToken(demoToken(t, "root", "admin"))); err != nil {
		t.Fatalf("admin with the role: %v", err)
	}
	var pong string
	if err := c.Call(ctx, service+".ping", nil, &pong, client.WithToken("")); err != nil || pong != "pong" {
		t.Fatalf("public function without a token: %q %v", pong, err)
	}
}

// goMath is the example math functions under a service name of the
// test's own, with the demo's token check.
func goMath(t *testing.T, service string) {
	t.Helper()
	b := newRedisBus(t, busConfig())
	h := meshtest.NewHarness(t, b)
	svc := handlers.NewService(service, handlers.Config{Auth: examples.DemoVerifier(), Logger: meshtest.Quiet, ReplicaID: "go-1"})
	handlers.Register(svc, "add", func(ctx context.Context, in examples.AddIn) (examples.Result, error) {
		return examples.Result{Value: in.A + in.B, Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "div", func(ctx context.Context, in examples.DivIn) (examples.Result, error) {
		return examples.Result{Value: in.A / in.B, Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "sqrt", func(ctx context.Context, in examples.SqrtIn) (examples.Result, error) {
		if in.X < 0 {
			return examples.Result{}, examples.ErrNegative
		}
		return examples.Result{Value: 2, Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "stats", func(ctx context.Context, _ struct{}) (string, error) { return "stats", nil }, handlers.RequireRole("admin"))
	h.Start(svc)
}

// A Node caller calls a Go function: the Go replica's validation, its
// application errors and token checks reach Node with their codes.
func TestNodeCallerGoReplica(t *testing.T) {
	t.Parallel()
	foreignCallerGoReplica(t, "Node", meshtest.Name("gosvc"), nodeCall)
}

// foreignCallerGoReplica calls the example math service, served by a Go
// replica, through call (a caller in lang) and checks what it sees:
// results, validation fields, application errors, token and role
// refusals, and not_found for a service no replica ever served (XADD
// NOMKSTREAM stores nothing, so the call fails at once).
func foreignCallerGoReplica(t *testing.T, lang, service string, call func(t testing.TB, mode, function, args string, flags ...string) nodeOutcome) {
	t.Helper()
	goMath(t, service)
	tok := demoToken(t, "ada")

	o := call(t, "call", service+".add", `{"a":1,"b":2}`, "--token", tok)
	var sum examples.Result
	json.Unmarshal(o.Result, &sum)
	if !o.OK || sum.Value != 3 || o.Replica != "go-1" {
		t.Fatalf("add from %s: %+v", lang, o)
	}
	o = call(t, "call", service+".div", `{"a":1,"b":0}`, "--token", tok)
	if o.OK || o.Code != fnmesh.CodeInvalidArgument || len(o.Fields) != 1 || o.Fields[0] != (fnmesh.FieldViolation{Field: "b", Rule: "ne", Param: "0"}) {
		t.Fatalf("Go validation seen from %s: %+v", lang, o)
	}
	o = call(t, "call", service+".sqrt", `{"x":-1}`, "--token", tok)
	if o.OK || o.Code != "negative_input" || o.Message != examples.ErrNegative.Message {
		t.Fatalf("Go application error seen from %s: %+v", lang, o)
	}
	for _, c := range []struct {
		fn, token string
		code      fnmesh.Code
	}{
		{"add", "", fnmesh.CodeUnauthenticated},
		{"stats", tok, fnmesh.CodePermissionDenied},
		{"nosuch", tok, fnmesh.CodeNotFound},
	} {
		if o := call(t, "call", service+"."+c.fn, `{}`, "--token", c.token); o.OK || o.Code != c.code {
			t.Errorf("%s from %s: %+v, want %s", c.fn, lang, o, c.code)
		}
	}
	if o := call(t, "call", service+".stats", `{}`, "--token", demoToken(t, "root", "admin")); !o.OK {
		t.Errorf("stats with the role from %s: %+v", lang, o)
	}
	if o := call(t, "call", meshtest.Name("nobody")+".f", `{}`, "--timeout", "5000"); o.OK || o.Code != fnmesh.CodeNotFound {
		t.Errorf("never-served service from %s: %+v, want not_found", lang, o)
	}
}

// One service, one Go replica process and one Node replica process: the
// calls of a Go caller spread over both.
func TestGoAndNodeReplicasShareTheLoad(t *testing.T) {
	goAndForeignReplicasShareTheLoad(t, "node", startNodeReplica)
}

// Sends cross languages too: Go sends run once each on a Node replica,
// Node sends run on a Go replica, and a Node function that keeps failing
// is retried and dead-lettered where Go reads it.
func TestSendsAcrossLanguages(t *testing.T) {
	t.Parallel()
	rdb := inspector(t)
	ctx := context.Background()
	nodeSvc := meshtest.Name("nodesend")
	startNodeReplica(t, nodeSvc, "node-s")
	c := newClient(t, client.Config{})
	for i := 0; i < 50; i++ {
		if err := c.Send(ctx, nodeSvc+".record", map[string]string{"key": fmt.Sprint("k", i)}); err != nil {
			t.Fatal(err)
		}
	}
	runs := "fnmesh-test:runs:" + nodeSvc
	t.Cleanup(func() { rdb.Del(ctx, runs) })
	meshtest.Eventually(t, 10*time.Second, "50 Go sends run by Node", func() bool { return rdb.HLen(ctx, runs).Val() == 50 })
	for k, v := range rdb.HGetAll(ctx, runs).Val() {
		if v != "1" {
			t.Errorf("send %s ran %s times", k, v)
		}
	}

	if err := c.Send(ctx, nodeSvc+".boom", nil); err != nil {
		t.Fatal(err)
	}
	b := newRedisBus(t, busConfig())
	t.Cleanup(func() { b.Close() })
	meshtest.Eventually(t, 15*time.Second, "failing Node send dead-lettered", func() bool {
		dls, _ := b.DeadLetters(ctx, nodeSvc, 10)
		return len(dls) == 1
	})
	dls, _ := b.DeadLetters(ctx, nodeSvc, 10)
	if d := dls[0]; d.Code != fnmesh.CodeInternal || d.Attempts != 5 || d.Replica != "node-s" || d.Fields["fn"] != "boom" || d.Origin == "" {
		t.Errorf("dead letter from Node: %+v", d)
	}

	goSvc := meshtest.Name("gosend")
	startWorker(t, workerSpec{Service: goSvc, Replica: "go-s"})
	for i := 0; i < 3; i++ {
		if o := nodeCall(t, "send", goSvc+".sleep", fmt.Sprintf(`{"ms":1,"key":"n%d"}`, i)); !o.OK || o.ID == "" {
			t.Fatalf("node send: %+v", o)
		}
	}
	goRuns := "runs:" + goSvc
	t.Cleanup(func() { rdb.Del(ctx, goRuns) })
	meshtest.Eventually(t, 10*time.Second, "Node sends run by Go", func() bool { return rdb.HLen(ctx, goRuns).Val() == 3 })
}

// A browser-style call: HTTP with an Origin and a bearer token, through
// the gateway, to a Node function; and the gateway's one inbox.
func TestGatewayToNodeFunction(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("gwnode")
	startNodeReplica(t, service, "node-gw", "--secret", examples.DemoSecret)
	goSvc := meshtest.Name("gwgo")
	goMath(t, goSvc)
	rdb := inspector(t)
	ctx := context.Background()
	c := newClient(t, client.Config{})
	g, err := gateway.New(gateway.Config{Client: c, Auth: examples.DemoVerifier(), CORSOrigins: []string{"https://app.example.com"}, Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	tok := demoToken(t, "ada")
	post := func(fn, body, token string) (int, http.Header, []byte) {
		t.Helper()
		service, function, _ := strings.Cut(fn, ".")
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/functions/"+service+"/"+function, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", "https://app.example.com")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header, b
	}
	errBody := func(b []byte) gateway.ErrorBody {
		var e gateway.ErrorBody
		json.Unmarshal(b, &e)
		return e
	}

	status, h, body := post(service+".add", `{"a":40,"b":2}`, tok)
	var sum examples.Result
	json.Unmarshal(body, &sum)
	if status != 200 || sum.Value != 42 || h.Get(gateway.HeaderReplica) != "node-gw" || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("gateway -> Node add: %d %s %v", status, body, h)
	}
	cases := []struct {
		fn, body, token string
		status          int
		code            fnmesh.Code
	}{
		{service + ".fail", `{"code":"out_of_stock","message":"none left"}`, tok, 422, "out_of_stock"},
		{service + ".div", `{"a":1,"b":0}`, tok, 400, fnmesh.CodeInvalidArgument},
		{service + ".admin", ``, tok, 403, fnmesh.CodePermissionDenied},
		{service + ".boom", ``, tok, 500, fnmesh.CodeInternal},
		{service + ".nosuch", ``, tok, 404, fnmesh.CodeNotFound},
		{service + ".add", `{}`, "", 401, fnmesh.CodeUnauthenticated},
		{goSvc + ".div", `{"a":1,"b":0}`, tok, 400, fnmesh.CodeInvalidArgument},
		{goSvc + ".sqrt", `{"x":-4}`, tok, 422, "negative_input"},
	}
	for _, c := range cases {
		status, _, body := post(c.fn, c.body, c.token)
		if e := errBody(body); status != c.status || e.Code != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.fn, status, body, c.status, c.code)
		}
	}
	if e := errBody(func() []byte { _, _, b := post(service+".div", `{"a":1,"b":0}`, tok); return b }()); len(e.Fields) != 1 || e.Fields[0].Field != "b" {
		t.Errorf("fields from Node through the gateway: %+v", e)
	}

	// One client, one inbox, for every request: every request id carries
	// the prefix of the gateway client's inbox, and its replies all came
	// back on that one stream.
	inbox := strings.TrimSuffix(strings.TrimPrefix(c.Inbox(), "fnmesh:reply:{"), "}")
	var wg sync.WaitGroup
	ids := make(chan string, 80)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				status, h, body := post(service+".add", `{"a":1,"b":1}`, tok)
				if status != 200 {
					t.Errorf("concurrent call: %d %s", status, body)
				}
				ids <- h.Get(gateway.HeaderRequestID)
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if !strings.HasPrefix(id, inbox+"-") || seen[id] {
			t.Fatalf("request id %q: want unique ids on the gateway's one inbox %s", id, inbox)
		}
		seen[id] = true
	}
	if n := rdb.Exists(ctx, c.Inbox()).Val(); n != 1 {
		t.Fatalf("the gateway's inbox %s does not exist", c.Inbox())
	}
}

// A Node caller reaches a versioned function on a Go replica: its
// request goes to the function's own stream (PROTOCOL.md §1).
func TestNodeCallerGoVersionedFunction(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("gover")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add@v2", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: 10 * (in.A + in.B)}, nil
	})
	h.Start(svc)
	o := nodeCall(t, "call", service+".add@v2", `{"a":1,"b":2}`)
	var out meshtest.AddOut
	json.Unmarshal(o.Result, &out)
	if !o.OK || out.Sum != 30 {
		t.Fatalf("add@v2 from Node: %+v", o)
	}
}
