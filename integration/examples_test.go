package integration

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
)

// exampleEnv makes this test binary run the example math binary's
// command line (examples.ServiceApp) with the arguments that follow, as
// cmd/examples/math does: the flags the deployments rely on, in a real
// process.
const exampleEnv = "FNMESH_TEST_EXAMPLE_MATH"

func runExampleIfAsked() {
	if os.Getenv(exampleEnv) == "" {
		return
	}
	app := examples.ServiceApp("math", "test", func(cfg handlers.Config, _ *slog.Logger) *handlers.Service {
		return examples.Math(cfg)
	})
	if err := app.Run(append([]string{"math"}, os.Args[1:]...)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// The example binary serves /healthz on --ops-addr while it serves calls,
// drains on SIGTERM and exits 0: what the Kubernetes probes and
// terminationGracePeriodSeconds in deployments/ rely on.
func TestExampleBinaryOpsAddr(t *testing.T) {
	t.Parallel()
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ops := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(os.Args[0], "--redis", redisURL, "--insecure", "--ops-addr", ops, "--drain", "2s", "--replica-id", "ops-test")
	cmd.Env = append(os.Environ(), exampleEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	health := func() int {
		resp, err := http.Get("http://" + ops + handlers.HealthPath)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	meshtest.Eventually(t, 20*time.Second, "example binary's /healthz never answered 200", func() bool { return health() == http.StatusOK })

	c := newClient(t, client.Config{})
	var out examples.Result
	if err := c.Call(t.Context(), "math.add", examples.AddIn{A: 1, B: 2}, &out); err != nil || out.Value != 3 || out.Replica != "ops-test" {
		t.Fatalf("math.add on the example binary: %+v %v", out, err)
	}

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("example binary exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("example binary still running 10s after SIGTERM (drain 2s)")
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if code := health(); code != 0 {
		t.Errorf("/healthz answers %d after exit", code)
	}
}
