package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
)

// The Python package (client/python) runs on Debian's python3 with
// python3-redis and python3-jwt (`make test` installs them); the replica
// and caller are client/python/tests/interop.py.
const pythonBin = "/usr/bin/python3"

func pythonInterop(t testing.TB) string {
	t.Helper()
	script, err := filepath.Abs("../client/python/tests/interop.py")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(pythonBin, "-c", "import redis.asyncio, jwt").CombinedOutput(); err != nil {
		t.Fatalf("%s lacks redis-py or PyJWT (Debian: apt-get install python3-redis python3-jwt): %v\n%s", pythonBin, err, out)
	}
	return script
}

// startPythonReplica starts a Python replica of service and waits until it
// has joined the group. args: --secret S, --concurrency N, --claim-idle SECONDS.
func startPythonReplica(t testing.TB, service, replica string, args ...string) *foreignReplica {
	t.Helper()
	argv := append([]string{pythonBin, pythonInterop(t), "serve", service, replica}, args...)
	return startForeignReplica(t, "python", replica, argv, 30*time.Second, 15*time.Second)
}

// pythonCall runs the Python caller once: mode "call" or "send",
// function, JSON arguments, then --token T / --timeout MS.
func pythonCall(t testing.TB, mode, function, args string, flags ...string) nodeOutcome {
	t.Helper()
	cmd := exec.Command(pythonBin, append([]string{pythonInterop(t), mode, function, args}, flags...)...)
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python %s %s: %v\n%s", mode, function, err, out)
	}
	var o nodeOutcome
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(out))), &o); err != nil {
		t.Fatalf("python %s %s printed %q: %v", mode, function, out, err)
	}
	return o
}

// A Go caller calls functions served by a Python replica: results, the
// Python side's errors and token checks arrive with their codes; its
// versioned function has a stream of its own; `fnmesh ls` and
// `fnmesh call` see it.
func TestGoCallerPythonReplica(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("pysvc")
	startPythonReplica(t, service, "py-1", "--secret", examples.DemoSecret)
	c := newClient(t, client.Config{Token: demoToken(t, "ada")})
	ctx := context.Background()

	var sum examples.Result
	var info client.ReplyInfo
	if err := c.Call(ctx, service+".add", examples.AddIn{A: 1, B: 2}, &sum, client.WithReplyInfo(&info)); err != nil {
		t.Fatal(err)
	}
	if sum.Value != 3 || sum.Replica != "py-1" || info.Replica != "py-1" {
		t.Fatalf("add: %+v, answered by %q", sum, info.Replica)
	}
	if err := c.Call(ctx, service+".add@v2", examples.AddIn{A: 1, B: 2}, &sum); err != nil || sum.Value != 30 {
		t.Fatalf("add@v2: %+v %v", sum, err)
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
		t.Errorf("validation fields from Python: %+v", fe.Fields)
	}
	fe = meshtest.WantCode(t, c.Call(ctx, service+".add", map[string]int{"a": 1}, nil), fnmesh.CodeInvalidArgument)
	if len(fe.Fields) != 1 || fe.Fields[0] != (fnmesh.FieldViolation{Field: "b", Rule: "required"}) {
		t.Errorf("a missing dataclass field from Python: %+v", fe.Fields)
	}
	if !errors.Is(c.Call(ctx, service+".pow", nil, nil), fnmesh.ErrNotFound) {
		t.Error("errors.Is(err, ErrNotFound) fails for a Python replica's not_found")
	}

	// Tokens: checked by the Python replica with the Go signer's secret.
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

	// The CLI: the registry shows the Python replica with its functions
	// and schemas, and `fnmesh call` reaches it.
	out, err := runCLI(t, "ls", "--json", service)
	if err != nil {
		t.Fatalf("fnmesh ls: %v\n%s", err, out)
	}
	for _, want := range []string{`"py-1"`, `"add@v2"`} {
		if !strings.Contains(out, want) {
			t.Errorf("fnmesh ls --json lacks %s:\n%s", want, out)
		}
	}
	out, err = runCLI(t, "describe", "--json", service+".add")
	if err != nil {
		t.Fatalf("fnmesh describe: %v\n%s", err, out)
	}
	for _, want := range []string{`"AddIn"`, `"required"`, `"number"`} {
		if !strings.Contains(out, want) {
			t.Errorf("fnmesh describe --json lacks %s:\n%s", want, out)
		}
	}
	if out, err := runCLI(t, "ls", service); err != nil || !strings.Contains(out, "py-1") {
		t.Errorf("fnmesh ls: %v\n%s", err, out)
	}
	out, err = runCLI(t, "call", "--token", demoToken(t, "ada"), service+".add", `{"a":40,"b":2}`)
	if err != nil || !strings.Contains(out, "42") {
		t.Errorf("fnmesh call: %v\n%s", err, out)
	}
}

// A Python caller calls a Go function: the Go replica's validation, its
// application errors and token checks reach Python with their codes.
func TestPythonCallerGoReplica(t *testing.T) {
	t.Parallel()
	foreignCallerGoReplica(t, "Python", meshtest.Name("gopy"), pythonCall)

	// A versioned Go function, and a send that a Go replica runs.
	goSvc := meshtest.Name("gopysend")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(goSvc, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add@v2", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: 10 * (in.A + in.B)}, nil
	})
	ran := make(chan string, 1)
	handlers.Register(svc, "note", func(_ context.Context, in map[string]string) (struct{}, error) {
		ran <- in["text"]
		return struct{}{}, nil
	})
	h.Start(svc)
	o := pythonCall(t, "call", goSvc+".add@v2", `{"a":1,"b":2}`)
	var out meshtest.AddOut
	json.Unmarshal(o.Result, &out)
	if !o.OK || out.Sum != 30 {
		t.Fatalf("add@v2 from Python: %+v", o)
	}
	if o := pythonCall(t, "send", goSvc+".note", `{"text":"from python"}`); !o.OK || o.ID == "" {
		t.Fatalf("send from Python: %+v", o)
	}
	select {
	case got := <-ran:
		if got != "from python" {
			t.Fatalf("the Go function got %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the send from Python did not run on the Go replica in 10s")
	}
}

// One service, one Go replica process and one Python replica process: the
// calls of a Go caller spread over both.
func TestGoAndPythonReplicasShareTheLoad(t *testing.T) {
	goAndForeignReplicasShareTheLoad(t, "py", startPythonReplica)
}

// A Python replica killed with kill -9 while it runs sends: every send
// that was accepted still runs, taken over by another replica once the
// dead one's entries have been idle for the claim time.
func TestPythonReplicaKilledMidSendsLosesNothing(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("pykill")
	rdb := inspector(t)
	ctx := context.Background()
	runs := "runs:" + service
	t.Cleanup(func() { rdb.Del(ctx, runs) })
	victim := startPythonReplica(t, service, "py-victim", "--concurrency", "32")
	c := newClient(t, client.Config{})
	const sends = 200
	for i := 0; i < sends; i++ {
		if err := c.Send(ctx, service+".sleep", SleepIn{Ms: 100, Key: fmt.Sprint("k", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Kill it while it is busy: some sends done, the rest running or waiting.
	meshtest.Eventually(t, 20*time.Second, "the victim ran some sends", func() bool { return rdb.HLen(ctx, runs).Val() >= 20 })
	victim.kill9(t)
	done := rdb.HLen(ctx, runs).Val()
	pending, err := rdb.XPending(ctx, "fnmesh:{"+service+"}:req", "fnmesh").Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed with %d of %d sends run, %d held by the dead replica", done, sends, pending.Count)
	if done >= sends || pending.Count == 0 {
		t.Fatalf("the kill came too late to test anything: %d run, %d pending", done, pending.Count)
	}
	// Another replica (Python, taking over after 1 s idle) finishes them.
	startPythonReplica(t, service, "py-heir", "--claim-idle", "1")
	meshtest.Eventually(t, 60*time.Second, "every send run", func() bool { return rdb.HLen(ctx, runs).Val() == sends })
	for k, v := range rdb.HGetAll(ctx, runs).Val() {
		if v != "1" && v != "2" {
			t.Errorf("send %s ran %s times", k, v)
		}
	}
	meshtest.Eventually(t, 10*time.Second, "nothing left pending", func() bool {
		p, err := rdb.XPending(ctx, "fnmesh:{"+service+"}:req", "fnmesh").Result()
		return err == nil && p.Count == 0
	})
}

// A key stored by a Go replica is honoured by a Python replica of the
// same service: both store it under the same name and value (PROTOCOL.md
// §12), so the Python replica answers with the Go replica's result, and
// refuses the key with other arguments.
func TestPythonReplicaHonoursGoIdempotencyKeys(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("pyidem")
	w := startWorker(t, workerSpec{Service: service, Replica: "go-replica"})
	c := newClient(t, client.Config{})
	ctx := context.Background()
	var got string
	if err := c.Call(ctx, service+".sleep", SleepIn{Ms: 1}, &got, client.WithIdempotencyKey("order-1")); err != nil || got != "go-replica" {
		t.Fatalf("first call: %q %v", got, err)
	}
	if err := w.terminate(20 * time.Second); err != nil {
		t.Fatalf("stopping the Go replica: %v", err)
	}
	startPythonReplica(t, service, "py-replica")
	c = newClient(t, client.Config{}) // a caller that has not seen the Go replica leave
	got = ""
	if err := c.Call(ctx, service+".sleep", SleepIn{Ms: 1}, &got, client.WithIdempotencyKey("order-1")); err != nil || got != "go-replica" {
		t.Fatalf("the same key on the Python replica: %q %v, want the Go replica's result", got, err)
	}
	err := c.Call(ctx, service+".sleep", SleepIn{Ms: 2}, &got, client.WithIdempotencyKey("order-1"))
	fe := meshtest.WantCode(t, err, fnmesh.CodeInvalidArgument)
	if !strings.Contains(fe.Message, `idempotency key "order-1" was already used with different arguments for `+service+".sleep") {
		t.Errorf("other arguments: %q", fe.Message)
	}
	if err := c.Call(ctx, service+".sleep", SleepIn{Ms: 1}, &got, client.WithIdempotencyKey("order-2")); err != nil || got != "py-replica" {
		t.Fatalf("a new key: %q %v, want the Python replica to run it", got, err)
	}
}
