package meshtest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/security"
)

var testSecret = []byte("meshtest-secret-of-at-least-32-bytes!")

func securedService(t *testing.T, name string) (*handlers.Service, *security.Signer) {
	v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	return handlers.NewService(name, handlers.Config{Auth: v, Logger: Quiet}), security.NewHS256Signer(testSecret)
}

func whoami(ctx context.Context, _ struct{}) (string, error) {
	c, ok := security.ClaimsFromContext(ctx)
	if !ok {
		return "", errors.New("no claims in context")
	}
	return c.Subject(), nil
}

func testTokenCheck(t *testing.T, h *Harness) {
	name := Name("acct")
	svc, signer := securedService(t, name)
	var runs atomic.Int64
	handlers.Register(svc, "whoami", func(ctx context.Context, in struct{}) (string, error) {
		runs.Add(1)
		return whoami(ctx, in)
	})
	h.Start(svc)
	good, _ := signer.Sign("alice", time.Minute, nil)
	expired, _ := signer.Sign("alice", -time.Hour, nil)
	other, _ := security.NewHS256Signer([]byte("another-secret-of-at-least-32-bytes")).Sign("mallory", time.Minute, nil)
	// alg "none" and a payload edited after signing.
	parts := strings.Split(good, ".")
	forged, _ := security.NewHS256Signer(testSecret).Sign("root", time.Minute, nil)
	tampered := parts[0] + "." + strings.Split(forged, ".")[1] + "." + parts[2]
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."

	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	cases := map[string]struct {
		token string
		want  string
	}{
		"missing":     {"", "missing token"},
		"expired":     {expired, "expired"},
		"wrong key":   {other, "signature"},
		"tampered":    {tampered, "signature"},
		"alg none":    {none, ""},
		"not a token": {"hello", "malformed"},
	}
	for label, tc := range cases {
		err := c.Call(context.Background(), fn(name, "whoami"), struct{}{}, nil, client.WithToken(tc.token))
		fe := WantCode(t, err, fnmesh.CodeUnauthenticated)
		if !strings.Contains(fe.Message, tc.want) {
			t.Errorf("%s: message %q, want it to mention %q", label, fe.Message, tc.want)
		}
		if strings.Contains(fe.Message, tc.token) && tc.token != "" {
			t.Errorf("%s: message echoes the token", label)
		}
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("function ran %d times with bad tokens", n)
	}
	var sub string
	if err := c.Call(context.Background(), fn(name, "whoami"), struct{}{}, &sub, client.WithToken(good)); err != nil || sub != "alice" {
		t.Fatalf("good token: %v %q", err, sub)
	}
	// A client-wide default token.
	cd := h.Client(client.Config{Token: good})
	if err := cd.Call(context.Background(), fn(name, "whoami"), struct{}{}, &sub); err != nil || sub != "alice" {
		t.Fatalf("default token: %v %q", err, sub)
	}
	// RS256 with a key id.
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	rv, err := security.NewJWTVerifier(security.JWTConfig{RSAPublicKeys: map[string]*rsa.PublicKey{"k1": &key.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	rname := Name("acct")
	rsvc := handlers.NewService(rname, handlers.Config{Auth: rv, Logger: Quiet})
	handlers.Register(rsvc, "whoami", whoami)
	h.Start(rsvc)
	rtok, _ := security.NewRS256Signer(key, "k1").Sign("bob", time.Minute, nil)
	if err := c.Call(context.Background(), fn(rname, "whoami"), struct{}{}, &sub, client.WithToken(rtok)); err != nil || sub != "bob" {
		t.Fatalf("RS256 token: %v %q", err, sub)
	}
	// An HS256 token signed with the RSA public key as secret (alg confusion).
	err = c.Call(context.Background(), fn(rname, "whoami"), struct{}{}, nil, client.WithToken(good))
	WantCode(t, err, fnmesh.CodeUnauthenticated)
}

func testRequireRole(t *testing.T, h *Harness) {
	name := Name("admin")
	svc, signer := securedService(t, name)
	var runs atomic.Int64
	handlers.Register(svc, "purge", func(context.Context, struct{}) (string, error) {
		runs.Add(1)
		return "purged", nil
	}, handlers.RequireRole("admin"))
	h.Start(svc)
	user, _ := signer.Sign("alice", time.Minute, security.Claims{"roles": []string{"user"}})
	admin, _ := signer.Sign("root", time.Minute, security.Claims{"roles": []string{"user", "admin"}})
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	err := c.Call(context.Background(), fn(name, "purge"), struct{}{}, nil, client.WithToken(user))
	WantCode(t, err, fnmesh.CodePermissionDenied)
	if !errors.Is(err, fnmesh.ErrPermissionDenied) {
		t.Fatal("errors.Is(err, ErrPermissionDenied) false")
	}
	if runs.Load() != 0 {
		t.Fatal("function ran for a caller without the role")
	}
	var out string
	if err := c.Call(context.Background(), fn(name, "purge"), struct{}{}, &out, client.WithToken(admin)); err != nil || out != "purged" {
		t.Fatalf("admin: %v %q", err, out)
	}
}

func testPublicFunction(t *testing.T, h *Harness) {
	name := Name("site")
	svc, _ := securedService(t, name)
	handlers.Register(svc, "ping", func(context.Context, struct{}) (string, error) { return "pong", nil }, handlers.Public())
	handlers.Register(svc, "whoami", whoami)
	h.Start(svc)
	c := h.Client(client.Config{})
	var out string
	if err := c.Call(context.Background(), fn(name, "ping"), struct{}{}, &out); err != nil || out != "pong" {
		t.Fatalf("public function without token: %v", err)
	}
	WantCode(t, c.Call(context.Background(), fn(name, "whoami"), struct{}{}, nil), fnmesh.CodeUnauthenticated)
}

func testServiceWithoutAuth(t *testing.T, h *Harness) {
	svc := handlers.NewService(Name("open"), handlers.Config{Logger: Quiet})
	handlers.Register(svc, "add", add)
	err := svc.Run(context.Background(), h.Bus)
	if err == nil || !strings.Contains(err.Error(), "AllowUnauthenticated") {
		t.Fatalf("Run without Auth: %v, want a config error naming AllowUnauthenticated", err)
	}
}
