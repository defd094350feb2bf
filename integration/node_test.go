package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
)

// The TypeScript client (client/js), built once per test run with its own
// tsc; node and `npm ci` are prerequisites that CI installs (.ci/run,
// `make js`).
var (
	jsOnce sync.Once
	jsDir  string
	jsErr  error
)

func nodeJS(t testing.TB) string {
	t.Helper()
	jsOnce.Do(func() {
		dir, err := filepath.Abs("../client/js")
		if err != nil {
			jsErr = err
			return
		}
		if _, err := exec.LookPath("node"); err != nil {
			jsErr = fmt.Errorf("node not found: install Node.js 20 or later (Debian: apt-get install nodejs npm)")
			return
		}
		tsc := filepath.Join(dir, "node_modules", "typescript", "bin", "tsc")
		if _, err := os.Stat(tsc); err != nil {
			jsErr = fmt.Errorf("client/js has no node_modules: run `make js` (npm ci in client/js) first")
			return
		}
		out, err := exec.Command("node", tsc, "-p", dir).CombinedOutput()
		if err != nil {
			jsErr = fmt.Errorf("building client/js with tsc: %v\n%s", err, out)
			return
		}
		jsDir = dir
	})
	if jsErr != nil {
		t.Fatal(jsErr)
	}
	return jsDir
}

// startNodeReplica starts a Node replica (client/js/tools/interop.ts) of
// service and waits until it has joined the group. args: --secret S,
// --concurrency N, --claim-idle SECONDS.
func startNodeReplica(t testing.TB, service, replica string, args ...string) *foreignReplica {
	t.Helper()
	argv := append([]string{"node", filepath.Join(nodeJS(t), "dist", "tools", "interop.js"), "serve", service, replica}, args...)
	return startForeignReplica(t, "node", replica, argv, 20*time.Second, 10*time.Second)
}

// nodeOutcome is what the Node caller printed.
type nodeOutcome struct {
	OK      bool                    `json:"ok"`
	Result  json.RawMessage         `json:"result"`
	Replica string                  `json:"replica"`
	ID      string                  `json:"id"`
	Code    fnmesh.Code             `json:"code"`
	Message string                  `json:"message"`
	Fields  []fnmesh.FieldViolation `json:"fields"`
}

// nodeCall runs the Node caller once: mode "call" or "send", function,
// JSON arguments, then --token T / --timeout MS.
func nodeCall(t testing.TB, mode, function, args string, flags ...string) nodeOutcome {
	t.Helper()
	dir := nodeJS(t)
	cmd := exec.Command("node", append([]string{filepath.Join(dir, "dist", "tools", "interop.js"), mode, function, args}, flags...)...)
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s %s: %v\n%s", mode, function, err, out)
	}
	var o nodeOutcome
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(out))), &o); err != nil {
		t.Fatalf("node %s %s printed %q: %v", mode, function, out, err)
	}
	return o
}

// The Node package's own test suite (client/js/test), against this Redis.
func TestNodeSuite(t *testing.T) {
	t.Parallel()
	dir := nodeJS(t)
	files, _ := filepath.Glob(filepath.Join(dir, "dist", "test", "*.test.js"))
	if len(files) == 0 {
		t.Fatal("no compiled tests in client/js/dist/test")
	}
	cmd := exec.Command("node", append([]string{"--test"}, files...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	out, err := cmd.CombinedOutput()
	summary := []string{}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "# ") || strings.HasPrefix(l, "not ok") {
			summary = append(summary, l)
		}
	}
	t.Logf("node --test:\n%s", strings.Join(summary, "\n"))
	if err != nil {
		t.Fatalf("node --test failed: %v\n%s", err, out)
	}
}
