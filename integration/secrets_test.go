package integration

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/security"
)

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// No binary logs or prints a secret: every one is started with a Redis
// password (in the URL, in REDIS_PASSWORD, in --redis-password), a JWT
// secret and a bearer token, logs at debug level, serves calls and
// fails some, and none of the three appears in its stdout or stderr.
func TestNoSecretsInOutput(t *testing.T) {
	t.Parallel()
	const (
		password  = "redis-pw-3f9a1c77e2"
		wrongPass = "wrong-pw-8b2d4e6f10"
		jwtSecret = "jwt-secret-5e7c9a1b3d5f7e9a1c3e5a7b"
	)
	srv, err := redistest.Start(redistest.Options{Users: []string{"leaky on >" + password + " ~* &* +@all"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	url := "redis://leaky:" + password + "@" + srv.Addr
	tok, err := security.NewHS256Signer([]byte(jwtSecret)).Sign("ada", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), examples.SecretEnv+"="+jwtSecret, "REDIS_URL="+url, "FNMESH_TOKEN=")
	secrets := map[string]string{"Redis password": password, "wrong Redis password": wrongPass, "JWT secret": jwtSecret, "token": tok}
	check := func(what, out string) {
		t.Helper()
		for name, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s shows the %s:\n%s", what, name, out)
			}
		}
	}

	// A replica of the example math service, logging every call.
	var mathOut lockedBuffer
	replica := exec.Command(os.Args[0], "--verbose", "--ops-addr", "", "--replica-id", "leak-test")
	replica.Env = append(env, exampleEnv+"=1")
	replica.Stdout, replica.Stderr = &mathOut, &mathOut
	replica.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := replica.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { replica.Process.Kill() })
	meshtest.Eventually(t, 30*time.Second, "the example replica never said it serves", func() bool {
		return strings.Contains(mathOut.String(), "replica serving")
	})

	// The gateway, logging every request.
	var gwErr lockedBuffer
	gw := exec.Command(fnmeshCLI(t), "gateway", "--listen", "127.0.0.1:0", "--verbose")
	gw.Env = env
	gw.Stderr = &gwErr
	gw.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := gw.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Process.Kill() })
	lines := bufio.NewReader(stdout)
	first, err := lines.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "listening on ") {
		t.Fatalf("gateway: %q %v\n%s", first, err, gwErr.String())
	}
	gwOut := first
	addr := strings.TrimSpace(strings.TrimPrefix(first, "listening on "))
	for _, auth := range []string{"Bearer " + tok, "Bearer " + tok + "x"} {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/functions/math/add", strings.NewReader(`{"a":1,"b":2}`))
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := auth == "Bearer "+tok; (resp.StatusCode == 200) != want {
			t.Fatalf("gateway call (valid token %v): %d %s", want, resp.StatusCode, body)
		}
		check("the gateway's reply", string(body))
	}

	// The CLI: calls that succeed and calls that fail.
	cli := func(extraEnv []string, args ...string) string {
		cmd := exec.Command(fnmeshCLI(t), args...)
		cmd.Env = append(append([]string{}, env...), extraEnv...)
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	plainURL := []string{"REDIS_URL=redis://leaky@" + srv.Addr, "REDIS_PASSWORD=" + password}
	runs := map[string]string{
		"call":                    cli(nil, "call", "math.add", `{"a":1,"b":2}`, "--token", tok),
		"call, password in env":   cli(plainURL, "call", "math.add", `{"a":1,"b":2}`, "--token", tok),
		"call, --redis-password":  cli(nil, "call", "--redis", "redis://leaky@"+srv.Addr, "--redis-password", password, "math.add", `{"a":1,"b":2}`, "--token", tok),
		"call, bad token":         cli(nil, "call", "math.add", `{"a":1,"b":2}`, "--token", tok+"x"),
		"call, invalid args":      cli(nil, "call", "math.div", `{"a":1,"b":0}`, "--token", tok),
		"call, wrong password":    cli([]string{"REDIS_URL=redis://leaky:" + wrongPass + "@" + srv.Addr}, "call", "math.add", `{}`, "--token", tok, "--timeout", "2s"),
		"call, unparsable URL":    cli([]string{"REDIS_URL=redis://leaky:" + password + "@" + srv.Addr + "/%zz"}, "call", "math.add", `{}`, "--token", tok),
		"gateway, unparsable URL": cli([]string{"REDIS_URL=redis://leaky:" + password + "@" + srv.Addr + "/%zz"}, "gateway", "--listen", "127.0.0.1:0"),
		"send":                    cli(nil, "send", "math.add", `{"a":1,"b":2}`, "--token", tok),
		"ls":                      cli(nil, "ls"),
		"ls --json":               cli(nil, "ls", "--json"),
		"describe":                cli(nil, "describe", "math"),
		"dlq list":                cli(nil, "dlq", "list", "math"),
		// Another subject: a token minted for "ada" in the same second as tok
		// would be tok itself, and printing it is the command's job.
		"token":           cli(nil, "token", "--sub", "grace"),
		"demo over Redis": cli(nil, "demo"),
	}
	if !strings.Contains(runs["call"], `"value":3`) || !strings.Contains(runs["call, password in env"], `"value":3`) || !strings.Contains(runs["call, --redis-password"], `"value":3`) {
		t.Fatalf("calls did not reach the replica: %v", runs)
	}
	for what, out := range runs {
		check("fnmesh "+what, out)
	}

	for _, p := range []*exec.Cmd{replica, gw} {
		p.Process.Signal(syscall.SIGTERM)
	}
	rest, _ := io.ReadAll(lines)
	gwOut += string(rest)
	replica.Wait()
	gw.Wait()
	check("the example replica", mathOut.String())
	check("the gateway's stdout", gwOut)
	check("the gateway's stderr", gwErr.String())
	if !strings.Contains(gwErr.String(), "gateway serving") || !strings.Contains(gwErr.String(), "leaky:xxxxx@") {
		t.Errorf("the gateway did not log its Redis URL, redacted:\n%s", gwErr.String())
	}
}
