package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/security"
)

func TestFlagsFirst(t *testing.T) {
	cases := map[string]string{
		"fnmesh call math.add {} --token T --timeout=2s": "fnmesh call --token T --timeout=2s math.add {}",
		"fnmesh call --token T math.add {}":              "fnmesh call --token T math.add {}",
		"fnmesh send mail.welcome {} --redis redis://x":  "fnmesh send --redis redis://x mail.welcome {}",
		"fnmesh call math.neg -5":                        "fnmesh call math.neg -5",
		"fnmesh demo --redis u":                          "fnmesh demo --redis u",
		"fnmesh dlq list math --json -n 5":               "fnmesh dlq list --json -n 5 math",
		"fnmesh dlq purge --all":                         "fnmesh dlq purge --all",
		"fnmesh dlq replay math 1-1 2-2 --redis r":       "fnmesh dlq replay --redis r math 1-1 2-2",
		"fnmesh nosuch a --b":                            "fnmesh nosuch a --b",
		"fnmesh describe math.add --json --redis u":      "fnmesh describe --json --redis u math.add",
		"fnmesh describe math --diff":                    "fnmesh describe --diff math",
		"fnmesh ls --json":                               "fnmesh ls --json",
	}
	app := newApp()
	for in, want := range cases {
		if got := strings.Join(flagsFirst(app, strings.Fields(in)), " "); got != want {
			t.Errorf("flagsFirst(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTokenCommandPrintsAToken(t *testing.T) {
	const secret = "an-operator-secret-of-32-bytes-or-more"
	t.Setenv(examples.SecretEnv, secret)
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"fnmesh", "token", "--sub", "alice", "--role", "admin"}); err != nil {
		t.Fatal(err)
	}
	v, _ := security.NewJWTVerifier(security.JWTConfig{HMACSecret: []byte(secret)})
	claims, err := v.Verify(context.Background(), strings.TrimSpace(out.String()))
	if err != nil || claims.Subject() != "alice" {
		t.Fatalf("token not signed with %s: %v", examples.SecretEnv, err)
	}
}

// Nothing signs or verifies with the public demo secret unless asked:
// without FNMESH_JWT_SECRET, token and gateway refuse, naming what to set.
func TestNoDemoSecretByDefault(t *testing.T) {
	t.Setenv(examples.SecretEnv, "")
	for _, args := range [][]string{
		{"fnmesh", "token", "--sub", "mallory", "--role", "admin"},
		{"fnmesh", "gateway", "--redis", "redis://127.0.0.1:1", "--listen", "127.0.0.1:0"},
	} {
		app := newApp()
		var out bytes.Buffer
		app.Writer = &out
		err := app.Run(args)
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), examples.SecretEnv) || !strings.Contains(err.Error(), "--demo") {
			t.Errorf("%v: %v (exit %d), want a usage error naming %s and --demo", args[1:], err, exitCode(err), examples.SecretEnv)
		}
		if out.Len() > 0 {
			t.Errorf("%v printed %q", args[1:], out.String())
		}
	}
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"fnmesh", "token", "--demo", "--sub", "demo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := examples.DemoVerifier().Verify(context.Background(), strings.TrimSpace(out.String())); err != nil {
		t.Fatalf("token --demo: %v", err)
	}
}

func TestCallRejectsBadJSONBeforeConnecting(t *testing.T) {
	app := newApp()
	err := app.Run([]string{"fnmesh", "call", "--redis", "redis://127.0.0.1:1", "math.add", "{not json"})
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("got %v (exit %d)", err, exitCode(err))
	}
}

func TestGatewayRefusesBadConfigBeforeServing(t *testing.T) {
	for _, args := range [][]string{
		{"--catalog", "/nonexistent/catalog.json"},
		{"--insecure", "--cors-origin", "app.example.com"},
		{"--insecure", "--timeout", "1m", "--max-timeout", "1s"},
	} {
		app := newApp()
		err := app.Run(append([]string{"fnmesh", "gateway", "--redis", "redis://127.0.0.1:1", "--listen", "127.0.0.1:0"}, args...))
		if err == nil || exitCode(err) != 2 {
			t.Errorf("gateway %v: %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
}
