package security_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/security"
)

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, k *rsa.PublicKey) map[string]any {
	return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64u(k.N.Bytes()), "e": b64u(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(kid string, k *ecdsa.PublicKey) map[string]any {
	b, _ := k.Bytes() // 0x04 || X || Y
	size := (len(b) - 1) / 2
	return map[string]any{"kty": "EC", "kid": kid, "crv": k.Curve.Params().Name, "x": b64u(b[1 : 1+size]), "y": b64u(b[1+size:])}
}

// jwksServer serves whatever set is current and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	status  int
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, keys ...map[string]any) *jwksServer {
	s := &jwksServer{status: 200}
	s.set(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		w.WriteHeader(s.status)
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...map[string]any) {
	b, _ := json.Marshal(map[string]any{"keys": keys})
	s.setRaw(b, 200)
}

func (s *jwksServer) setRaw(body []byte, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.status = body, status
}

func claimsNow() security.Claims {
	now := time.Now().Unix()
	return security.Claims{"sub": "alice", "exp": now + 60, "iat": now}
}

func TestES256(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	v := mustVerifier(t, security.JWTConfig{ECDSAPublicKeys: map[string]*ecdsa.PublicKey{"e1": &key.PublicKey, "big": &p384.PublicKey}})
	good, _ := security.NewES256Signer(key, "e1").SignClaims(claimsNow())
	if c, err := v.Verify(context.Background(), good); err != nil || c.Subject() != "alice" {
		t.Fatalf("ES256: %v", err)
	}
	bad := map[string]string{}
	bad["wrong key"], _ = security.NewES256Signer(other, "e1").SignClaims(claimsNow())
	bad["unknown kid"], _ = security.NewES256Signer(key, "e9").SignClaims(claimsNow())
	// An ES256 token whose kid names a P-384 key: the curve must match the algorithm.
	bad["curve mismatch"], _ = security.NewES256Signer(key, "big").SignClaims(claimsNow())
	// HS256 is not among the algorithms of an EC-only verifier.
	bad["hs256"], _ = security.NewHS256Signer(secret).SignClaims(claimsNow())
	parts := strings.Split(good, ".")
	bad["alg none"] = b64u([]byte(`{"alg":"none","kid":"e1"}`)) + "." + parts[1] + "."
	bad["tampered"] = parts[0] + "." + b64u([]byte(`{"sub":"root","exp":9999999999}`)) + "." + parts[2]
	for name, tok := range bad {
		if _, err := v.Verify(context.Background(), tok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
			t.Errorf("%s: %v, want unauthenticated", name, err)
		}
	}
}

func TestJWKS(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := newJWKSServer(t, rsaJWK("r1", &rk.PublicKey), ecJWK("e1", &ek.PublicKey))
	v := mustVerifier(t, security.JWTConfig{JWKSURL: srv.URL, JWKSMinInterval: 50 * time.Millisecond, Audience: "fnmesh"})
	ctx := context.Background()
	withAud := func() security.Claims { c := claimsNow(); c["aud"] = "fnmesh"; return c }
	rtok, _ := security.NewRS256Signer(rk, "r1").SignClaims(withAud())
	etok, _ := security.NewES256Signer(ek, "e1").SignClaims(withAud())
	for name, tok := range map[string]string{"rs256": rtok, "es256": etok} {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatalf("%s via JWKS: %v", name, err)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for two tokens, want 1 (cached)", n)
	}
	for i := 0; i < 20; i++ {
		v.Verify(ctx, rtok)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want the set cached", n)
	}

	// A token signed by the EC key but claiming RS256 under the EC kid.
	confused := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(withAud()))
	confused.Header["kid"] = "e1"
	ctok, _ := confused.SignedString(rk)
	if _, err := v.Verify(ctx, ctok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated || !strings.Contains(err.Error(), "not a key for RS256") {
		t.Fatalf("RS256 token under an EC kid: %v", err)
	}
	// HS256 signed with the RSA public key as secret (algorithm confusion).
	pubDER := rk.PublicKey.N.Bytes()
	htok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(withAud())).SignedString(pubDER)
	if _, err := v.Verify(ctx, htok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
		t.Fatalf("HS256 token against a JWKS verifier: %v", err)
	}
	// Wrong audience.
	noAud, _ := security.NewRS256Signer(rk, "r1").SignClaims(claimsNow())
	if _, err := v.Verify(ctx, noAud); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
		t.Fatalf("token without the audience: %v", err)
	}

	// Key rotation: a token with a new kid makes the verifier fetch again.
	rk2, _ := rsa.GenerateKey(rand.Reader, 2048)
	srv.set(rsaJWK("r2", &rk2.PublicKey), ecJWK("e1", &ek.PublicKey))
	time.Sleep(60 * time.Millisecond) // past JWKSMinInterval; no event marks it
	r2tok, _ := security.NewRS256Signer(rk2, "r2").SignClaims(withAud())
	if _, err := v.Verify(ctx, r2tok); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	// Unknown kids do not make a fetch per token: at most one per
	// JWKSMinInterval (50ms here).
	nope, _ := security.NewRS256Signer(rk2, "nope").SignClaims(withAud())
	before, start := srv.fetches.Load(), time.Now()
	for i := 0; i < 20; i++ {
		v.Verify(ctx, nope)
	}
	allowed := 1 + int64(time.Since(start)/(50*time.Millisecond))
	if n := srv.fetches.Load() - before; n > allowed {
		t.Fatalf("%d fetches for 20 tokens with an unknown kid in %v, want at most %d", n, time.Since(start), allowed)
	}
}

func TestBadJWKSKeepsTheOldKeysAndFailsClosed(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	srv := newJWKSServer(t, rsaJWK("r1", &rk.PublicKey))
	v := mustVerifier(t, security.JWTConfig{JWKSURL: srv.URL, JWKSRefresh: time.Millisecond, JWKSMinInterval: time.Millisecond, Logger: quietLog})
	tok, _ := security.NewRS256Signer(rk, "r1").SignClaims(claimsNow())
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	srv.setRaw([]byte("<html>oops</html>"), 200)
	time.Sleep(5 * time.Millisecond) // let the cached set go stale
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("a broken refresh dropped the good keys: %v", err)
	}
	err := v.JWKS().Refresh(context.Background())
	var je *security.JWKSError
	if !errors.As(err, &je) || je.URL != srv.URL {
		t.Fatalf("Refresh of a broken set: %v, want *JWKSError", err)
	}

	// A verifier that never got a good set refuses every token.
	srv.setRaw([]byte(`{"keys":[]}`), 200)
	v2 := mustVerifier(t, security.JWTConfig{JWKSURL: srv.URL, Logger: quietLog})
	if _, err := v2.Verify(context.Background(), tok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated || !strings.Contains(err.Error(), "no RSA or EC signing key") {
		t.Fatalf("empty set: %v", err)
	}
	srv.setRaw([]byte(`{}`), 503)
	v3 := mustVerifier(t, security.JWTConfig{JWKSURL: srv.URL, Logger: quietLog})
	if _, err := v3.Verify(context.Background(), tok); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated || !strings.Contains(err.Error(), "503") {
		t.Fatalf("server error: %v", err)
	}
}

func TestMalformedJWKSAreTypedErrors(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := rsaJWK("r1", &rk.PublicKey)
	with := func(k, v string) map[string]any {
		m := map[string]any{}
		for a, b := range good {
			m[a] = b
		}
		m[k] = v
		return m
	}
	cases := map[string]string{
		"not json":     `not json`,
		"no keys":      `{"foo":1}`,
		"bad n":        mustJSON(map[string]any{"keys": []any{with("n", "***")}}),
		"bad e":        mustJSON(map[string]any{"keys": []any{with("e", "")}}),
		"small rsa":    mustJSON(map[string]any{"keys": []any{rsaJWK("s", &small.PublicKey)}}),
		"bad curve":    `{"keys":[{"kty":"EC","crv":"P-1","x":"AA","y":"AA"}]}`,
		"off curve":    `{"keys":[{"kty":"EC","crv":"P-256","x":"` + b64u(make([]byte, 32)) + `","y":"` + b64u(make([]byte, 32)) + `"}]}`,
		"unknown alg":  mustJSON(map[string]any{"keys": []any{with("alg", "HS256")}}),
		"dup kid":      mustJSON(map[string]any{"keys": []any{good, good}}),
		"only enc key": mustJSON(map[string]any{"keys": []any{with("use", "enc")}}),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.setRaw([]byte(body), 200)
			j := security.NewJWKS(security.JWKSConfig{URL: srv.URL, Logger: quietLog})
			err := j.Refresh(context.Background())
			var je *security.JWKSError
			if !errors.As(err, &je) {
				t.Fatalf("got %v, want *JWKSError", err)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// FuzzVerify feeds arbitrary strings to the token parser: it never
// panics, and the only tokens it accepts carry the claims that were
// signed (a token cannot be forged by editing a valid one).
func FuzzVerify(f *testing.F) {
	hs := security.NewHS256Signer(secret)
	good, _ := hs.Sign("alice", time.Hour, security.Claims{"roles": []string{"admin"}})
	parts := strings.Split(good, ".")
	f.Add(good)
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add("eyJhbGciOiJub25lIn0." + parts[1] + ".")
	f.Add("a.b.c")
	f.Add("..")
	f.Add(strings.Repeat("A", 300))
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	etok, _ := security.NewES256Signer(ek, "e").Sign("bob", time.Hour, nil)
	f.Add(etok)
	v := mustVerifierF(f, security.JWTConfig{HMACSecret: secret, ECDSAPublicKeys: map[string]*ecdsa.PublicKey{"e": &ek.PublicKey}})
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err != nil {
			if fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
				t.Fatalf("error with code %s: %v", fnmesh.CodeOf(err), err)
			}
			return
		}
		if token != good && token != etok {
			t.Fatalf("accepted a token that was never signed: %q (claims %v)", token, c)
		}
	})
}

func FuzzParseJWKS(f *testing.F) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add([]byte(mustJSON(map[string]any{"keys": []any{rsaJWK("r", &rk.PublicKey), ecJWK("e", &ek.PublicKey)}})))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":null}`))
	var body atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body.Load().([]byte)) }))
	defer srv.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		body.Store(data)
		j := security.NewJWKS(security.JWKSConfig{URL: srv.URL, Logger: quietLog})
		err := j.Refresh(context.Background())
		var je *security.JWKSError
		if err != nil && !errors.As(err, &je) {
			t.Fatalf("untyped error %T %v", err, err)
		}
		j.Key(context.Background(), "r", "RS256")
	})
}

func mustVerifierF(f *testing.F, cfg security.JWTConfig) *security.JWTVerifier {
	v, err := security.NewJWTVerifier(cfg)
	if err != nil {
		f.Fatal(err)
	}
	return v
}
