package examples_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/security"
)

// The example policy file fits the example math service and decides as
// its comments say.
func TestMathPolicyFile(t *testing.T) {
	p, err := security.LoadPolicy("../../cmd/examples/math/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := meshtest.NewHarness(t, bus.NewMemory())
	h.Start(examples.Math(handlers.Config{Auth: examples.DemoVerifier(), Policy: p, Logger: meshtest.Quiet}))
	sign := func(c security.Claims) string {
		tok, _ := security.NewHS256Signer([]byte(examples.DemoSecret)).Sign("u", time.Minute, c)
		return tok
	}
	user, gold, admin := sign(nil), sign(security.Claims{"tier": "gold"}), sign(security.Claims{"roles": []string{"admin"}})
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	cases := []struct {
		fn, token string
		in        any
		want      fnmesh.Code
	}{
		{"add", "", examples.AddIn{A: 1}, ""},
		{"div", "", examples.DivIn{A: 1, B: 1}, fnmesh.CodeUnauthenticated},
		{"div", user, examples.DivIn{A: 1, B: 1}, ""},
		{"sqrt", user, examples.SqrtIn{X: 4}, fnmesh.CodePermissionDenied},
		{"sqrt", gold, examples.SqrtIn{X: 4}, ""},
		{"stats", gold, struct{}{}, fnmesh.CodePermissionDenied},
		{"stats", admin, struct{}{}, ""},
	}
	for _, tc := range cases {
		err := c.Call(context.Background(), "math."+tc.fn, tc.in, nil, client.WithToken(tc.token))
		if got := fnmesh.CodeOf(err); got != tc.want {
			t.Errorf("math.%s: %q (%v), want %q", tc.fn, got, err, tc.want)
		}
	}
}

// The example services never verify with the public demo secret unless
// asked: without FNMESH_JWT_SECRET they refuse to start, before they
// connect to anything, and say what to set.
func TestServiceAppRefusesToStartWithoutSecret(t *testing.T) {
	t.Setenv(examples.SecretEnv, "")
	app := examples.ServiceApp("math", "test", func(cfg handlers.Config, _ *slog.Logger) *handlers.Service {
		return examples.Math(cfg)
	})
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	err := app.Run([]string{"math", "--redis", "redis://127.0.0.1:1", "--ops-addr", ""})
	if err == nil || examples.ExitCode(err) != 2 || !strings.Contains(err.Error(), examples.SecretEnv) || !strings.Contains(err.Error(), "--demo") {
		t.Fatalf("without a secret: %v (exit %d), want a usage error naming %s and --demo", err, examples.ExitCode(err), examples.SecretEnv)
	}
	// Asked for, the demo secret is used: the replica gets as far as Redis
	// (nothing listens on port 1).
	err = app.Run([]string{"math", "--redis", "redis://127.0.0.1:1", "--ops-addr", "", "--demo"})
	if err == nil || strings.Contains(err.Error(), examples.SecretEnv) {
		t.Fatalf("with --demo: %v, want a Redis error", err)
	}
	if _, err := examples.Secret(false); !errors.Is(err, examples.ErrNoSecret) {
		t.Fatalf("Secret(false) without %s: %v", examples.SecretEnv, err)
	}
	t.Setenv(examples.SecretEnv, "an-operator-secret-of-32-bytes-or-more")
	if s, err := examples.Secret(false); err != nil || string(s) != "an-operator-secret-of-32-bytes-or-more" {
		t.Fatalf("Secret(false) = %q, %v", s, err)
	}
}

// Each flag's help states its default once.
func TestServiceAppHelp(t *testing.T) {
	app := examples.ServiceApp("math", "test", func(cfg handlers.Config, _ *slog.Logger) *handlers.Service { return examples.Math(cfg) })
	var out strings.Builder
	app.Writer = &out
	if err := app.Run([]string{"math", "--help"}); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Count(line, "(default") > 1 {
			t.Errorf("two defaults: %s", line)
		}
	}
	if !strings.Contains(out.String(), "drain timeout on SIGTERM (default: 30s)") {
		t.Errorf("--drain's default:\n%s", out.String())
	}
}
