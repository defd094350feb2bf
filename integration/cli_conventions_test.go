package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/security"
)

// With Redis down, the CLI prints its own error with its code, not
// go-redis's log lines (those are debug lines, shown with --debug).
func TestCLIRedisDownPrintsOneError(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"ls"}, {"call", "math.add", "{}", "--timeout", "2s"}} {
		cmd := exec.Command(fnmeshCLI(t), args...)
		cmd.Env = append(os.Environ(), "REDIS_URL=redis://127.0.0.1:1")
		out, err := cmd.CombinedOutput()
		if err == nil || cmd.ProcessState.ExitCode() != 1 {
			t.Fatalf("%v with Redis down: %v\n%s", args, err, out)
		}
		if strings.Contains(string(out), "pool.go") || !strings.HasPrefix(string(out), "fnmesh: unavailable: ") {
			t.Errorf("%v with Redis down printed:\n%s", args, out)
		}
	}
	cmd := exec.Command(fnmeshCLI(t), "--debug", "ls")
	cmd.Env = append(os.Environ(), "REDIS_URL=redis://127.0.0.1:1")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "level=DEBUG") || !strings.Contains(string(out), "component=go-redis") {
		t.Errorf("--debug does not show go-redis's lines:\n%s", out)
	}
}

// dlq replay --token sends the replayed requests with a new token: the
// one they first came with has often expired by then.
func TestCLIDeadLetterReplayWithToken(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("clireplay")
	b := newRedisBus(t, busConfig())
	h := meshtest.NewHarness(t, b)
	var fixed atomic.Bool
	tokens := make(chan string, 10)
	// Accepts any token; the function records which one it ran with.
	anyToken := security.VerifierFunc(func(_ context.Context, tok string) (security.Claims, error) {
		return security.Claims{"sub": tok}, nil
	})
	svc := handlers.NewService(service, handlers.Config{Auth: anyToken, Logger: meshtest.Quiet,
		Retry: handlers.RetryPolicy{MaxAttempts: 1}})
	handlers.Register(svc, "mail", func(ctx context.Context, _ struct{}) (struct{}, error) {
		if !fixed.Load() {
			return struct{}{}, fnmesh.NewError("smtp_down", "mail server refused")
		}
		claims, _ := security.ClaimsFromContext(ctx)
		tokens <- claims.Subject()
		return struct{}{}, nil
	})
	h.Start(svc)
	c := newClient(t, client.Config{})
	if err := c.Send(context.Background(), service+".mail", struct{}{}, client.WithToken("old-token")); err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	meshtest.Eventually(t, 10*time.Second, "no dead letter", func() bool {
		out, err := runCLI(t, "dlq", "list", service, "--json")
		return err == nil && json.Unmarshal([]byte(out), &list) == nil && len(list) == 1
	})
	fixed.Store(true)
	if out, err := runCLI(t, "dlq", "replay", service, list[0]["id"].(string), "--token", "new-token", "--json"); err != nil || strings.TrimSpace(out) != "{\n  \"replayed\": 1\n}" {
		t.Fatalf("dlq replay --token: %v\n%s", err, out)
	}
	select {
	case tok := <-tokens:
		if tok != "new-token" {
			t.Fatalf("replayed request carried token %q, want new-token", tok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("replayed request did not run")
	}
}
