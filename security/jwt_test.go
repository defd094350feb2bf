package security_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/security"
)

var secret = []byte("a-test-secret-of-at-least-32-bytes!!")

func mustVerifier(t *testing.T, cfg security.JWTConfig) *security.JWTVerifier {
	t.Helper()
	v, err := security.NewJWTVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestJWTVerifier(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	v := mustVerifier(t, security.JWTConfig{
		HMACSecret: secret, RSAPublicKeys: map[string]*rsa.PublicKey{"k1": &key.PublicKey},
		Issuer: "auth.example", Audience: "fnmesh", Leeway: time.Second,
	})
	hs := security.NewHS256Signer(secret)
	hs.Issuer, hs.Audience = "auth.example", "fnmesh"
	rs := security.NewRS256Signer(key, "k1")
	rs.Issuer, rs.Audience = "auth.example", "fnmesh"
	sign := func(s *security.Signer, c security.Claims) string {
		tok, err := s.SignClaims(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now().Unix()
	base := func() security.Claims {
		return security.Claims{"sub": "alice", "iss": "auth.example", "aud": "fnmesh", "exp": now + 60, "iat": now}
	}
	with := func(k string, v any) security.Claims { c := base(); c[k] = v; return c }
	without := func(k string) security.Claims { c := base(); delete(c, k); return c }
	good := sign(hs, base())
	parts := strings.Split(good, ".")
	cases := []struct {
		name, token, want string
	}{
		{"hs256", good, ""},
		{"rs256", sign(rs, base()), ""},
		{"rs256 without kid", sign(security.NewRS256Signer(key, ""), base()), ""},
		{"missing", "", "missing token"},
		{"expired", sign(hs, with("exp", now-60)), "expired"},
		{"no expiry", sign(hs, without("exp")), "required claim"},
		{"not yet valid", sign(hs, with("nbf", now+3600)), "not valid yet"},
		{"issued in the future", sign(hs, with("iat", now+3600)), "future"},
		{"wrong issuer", sign(hs, with("iss", "evil")), "issuer"},
		{"wrong audience", sign(hs, with("aud", "other")), "audience"},
		{"wrong hmac key", sign(security.NewHS256Signer([]byte("another-secret-of-at-least-32-bytes!")), base()), "signature"},
		{"wrong rsa key", sign(security.NewRS256Signer(other, "k1"), base()), "signature"},
		{"unknown kid", sign(security.NewRS256Signer(key, "k9"), base()), "no key"},
		{"tampered payload", parts[0] + "." + strings.Split(sign(hs, with("sub", "root")), ".")[1] + "." + parts[2], "signature"},
		{"alg none", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + ".", "signature"},
		{"garbage", "not.a.token", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := v.Verify(context.Background(), tc.token)
			if tc.want == "" {
				if err != nil || claims.Subject() != "alice" {
					t.Fatalf("got %v, %v", claims, err)
				}
				return
			}
			var fe *fnmesh.Error
			if err == nil || !asError(err, &fe) || fe.Code != fnmesh.CodeUnauthenticated {
				t.Fatalf("got %v, want unauthenticated", err)
			}
			if !strings.Contains(fe.Message, tc.want) {
				t.Fatalf("message %q, want it to mention %q", fe.Message, tc.want)
			}
		})
	}
}

func asError(err error, fe **fnmesh.Error) bool {
	e, ok := err.(*fnmesh.Error)
	*fe = e
	return ok
}

func TestJWTConfigValidate(t *testing.T) {
	cases := map[string]security.JWTConfig{
		"no key":          {},
		"short secret":    {HMACSecret: []byte("short")},
		"alg without key": {HMACSecret: secret, Algorithms: []string{"RS256"}},
		"unknown alg":     {HMACSecret: secret, Algorithms: []string{"none"}},
	}
	for name, cfg := range cases {
		if _, err := security.NewJWTVerifier(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClaims(t *testing.T) {
	c := security.Claims{"sub": "a", "roles": []any{"user", "admin"}, "scope": "read write"}
	if !c.HasRole("admin") || c.HasRole("root") {
		t.Fatal("HasRole")
	}
	if s := c.Strings("scope"); len(s) != 2 || s[1] != "write" {
		t.Fatalf("scope %v", s)
	}
	if r := (security.Claims{"role": "ops"}).Roles(); len(r) != 1 || r[0] != "ops" {
		t.Fatalf("role %v", r)
	}
	ctx := security.WithClaims(context.Background(), c)
	if got, ok := security.ClaimsFromContext(ctx); !ok || got.Subject() != "a" {
		t.Fatal("ClaimsFromContext")
	}
	if _, ok := security.ClaimsFromContext(context.Background()); ok {
		t.Fatal("claims in an empty context")
	}
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestWrongAlgorithm(t *testing.T) {
	v := mustVerifier(t, security.JWTConfig{HMACSecret: secret, Algorithms: []string{"HS256"}})
	now := time.Now().Unix()
	c := jwt.MapClaims{"sub": "a", "exp": now + 60}
	hs384, _ := jwt.NewWithClaims(jwt.SigningMethodHS384, c).SignedString(secret)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
	for name, tok := range map[string]string{"HS384 when only HS256 is allowed": hs384, "alg none": none} {
		if _, err := v.Verify(context.Background(), tok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Base64 that is not in its one strict spelling is rejected.
	good, _ := security.NewHS256Signer(secret).Sign("a", time.Minute, nil)
	sig := good[strings.LastIndex(good, ".")+1:]
	last := sig[len(sig)-1]
	alt := map[byte]byte{'A': 'B', 'Q': 'R', 'g': 'h', 'w': 'x'}[last]
	if alt != 0 {
		if _, err := v.Verify(context.Background(), good[:len(good)-1]+string(alt)); err == nil {
			t.Error("a signature with different unused bits was accepted")
		}
	}
}
