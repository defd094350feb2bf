package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

var (
	fnmeshOnce sync.Once
	fnmeshBin  string
	fnmeshErr  error
)

// fnmeshCLI builds cmd/fnmesh once per test run and returns its path.
func fnmeshCLI(t *testing.T) string {
	t.Helper()
	fnmeshOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fnmesh-cli-")
		if err != nil {
			fnmeshErr = err
			return
		}
		fnmeshBin = filepath.Join(dir, "fnmesh")
		out, err := exec.Command("go", "build", "-o", fnmeshBin, "../cmd/fnmesh").CombinedOutput()
		if err != nil {
			fnmeshErr = err
			fnmeshBin = string(out)
		}
	})
	if fnmeshErr != nil {
		t.Fatalf("go build ./cmd/fnmesh: %v\n%s", fnmeshErr, fnmeshBin)
	}
	return fnmeshBin
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(fnmeshCLI(t), args...)
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestCLIDeadLetters(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("clidlq")
	b := newRedisBus(t, busConfig())
	h := meshtest.NewHarness(t, b)
	var fixed atomic.Bool
	done := make(chan string, 10)
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet,
		Retry: handlers.RetryPolicy{MaxAttempts: 2, InitialBackoff: 5 * time.Millisecond}})
	handlers.Register(svc, "mail", func(_ context.Context, in struct{ To string }) (struct{}, error) {
		if !fixed.Load() {
			return struct{}{}, fnmesh.NewError("smtp_down", "mail server refused")
		}
		done <- in.To
		return struct{}{}, nil
	})
	h.Start(svc)
	c := newClient(t, client.Config{})
	for _, to := range []string{"a@x", "b@x"} {
		if err := c.Send(context.Background(), service+".mail", struct{ To string }{to}, client.WithToken("secret-token")); err != nil {
			t.Fatal(err)
		}
	}
	var list []map[string]any
	meshtest.Eventually(t, 10*time.Second, "dead letters not listed", func() bool {
		out, err := runCLI(t, "dlq", "list", service, "--json")
		return err == nil && json.Unmarshal([]byte(out), &list) == nil && len(list) == 2
	})
	if list[0]["code"] != "smtp_down" || list[0]["attempts"].(float64) != 2 || list[0]["function"] != "mail" {
		t.Fatalf("dlq list: %v", list[0])
	}
	table, err := runCLI(t, "dlq", "list", service)
	if err != nil || !strings.Contains(table, "mail server refused") {
		t.Fatalf("dlq list (table): %v\n%s", err, table)
	}
	id := list[0]["id"].(string)
	show, err := runCLI(t, "dlq", "show", id) // no --service: searched
	if err != nil || !strings.Contains(show, `"reason": "mail server refused"`) || !strings.Contains(show, service) {
		t.Fatalf("dlq show: %v\n%s", err, show)
	}
	if strings.Contains(show, "secret-token") {
		t.Fatal("dlq show prints the caller's token")
	}
	fixed.Store(true)
	if out, err := runCLI(t, "dlq", "replay", service, id); err != nil || !strings.Contains(out, "replayed 1") {
		t.Fatalf("dlq replay: %v\n%s", err, out)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("replayed request did not run")
	}
	if out, err := runCLI(t, "dlq", "purge", service); err != nil || !strings.Contains(out, "purged 1") {
		t.Fatalf("dlq purge: %v\n%s", err, out)
	}
	if out, _ := runCLI(t, "dlq", "list", service, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("dead letters after purge: %s", out)
	}
	if out, err := runCLI(t, "dlq", "show", "1-1"); err == nil {
		t.Fatalf("dlq show of an unknown id succeeded: %s", out)
	}
}

func TestCLICallAndSend(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("clicall")
	b := newRedisBus(t, busConfig())
	h := meshtest.NewHarness(t, b)
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	out, err := runCLI(t, "call", service+".add", `{"a":2,"b":3}`, "--timeout", "5s")
	if err != nil || strings.TrimSpace(out) != `{"sum":5}` {
		t.Fatalf("fnmesh call: %v\n%s", err, out)
	}
	out, err = runCLI(t, "call", service+".add", `{"a":-1}`)
	if err == nil || !strings.Contains(out, "invalid_argument") || !strings.Contains(out, "a (gte=0)") {
		t.Fatalf("fnmesh call with invalid arguments: %v\n%s", err, out)
	}
	if code := err.(*exec.ExitError).ExitCode(); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	out, err = runCLI(t, "send", service+".add", `{"a":1,"b":1}`)
	if err != nil || !strings.HasPrefix(out, "queued ") {
		t.Fatalf("fnmesh send: %v\n%s", err, out)
	}
}
