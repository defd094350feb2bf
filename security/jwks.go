package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"time"
)

// JWKSConfig configures NewJWKS.
type JWKSConfig struct {
	// URL of the key set (https://issuer/.well-known/jwks.json).
	URL string
	// Refresh is how long fetched keys are used before they are fetched
	// again. Default 10m.
	Refresh time.Duration
	// MinInterval is the least time between two fetches, also when a
	// token names a kid the cached set lacks. Default 30s.
	MinInterval time.Duration
	// HTTPClient fetches the set. Default: a client with a 5s timeout.
	HTTPClient *http.Client
	// Logger receives fetch failures. Default slog.Default().
	Logger *slog.Logger
}

// JWKSError says why a key set could not be used: the fetch failed, or
// the document is not a key set with at least one usable signing key.
type JWKSError struct {
	URL string
	Err error
}

func (e *JWKSError) Error() string { return "security: JWKS " + e.URL + ": " + e.Err.Error() }
func (e *JWKSError) Unwrap() error { return e.Err }

// maxJWKSBytes bounds a fetched key set.
const maxJWKSBytes = 1 << 20

// JWKS is a JSON Web Key Set fetched over HTTP and cached. A fetch that
// fails keeps the keys fetched before; a token whose kid is unknown
// triggers a fetch at most every MinInterval (key rotation). Safe for
// concurrent use.
type JWKS struct {
	cfg JWKSConfig

	mu        sync.Mutex
	keys      map[string]jwk
	fetched   time.Time // last successful fetch
	tried     time.Time // last attempt
	lastErr   error
	fetchDone chan struct{} // non-nil while a fetch runs
}

type jwk struct {
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
	alg string // "" when the set does not say
}

// NewJWKS returns a key set that fetches cfg.URL on first use.
func NewJWKS(cfg JWKSConfig) *JWKS {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 10 * time.Minute
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = 30 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &JWKS{cfg: cfg}
}

// Key returns the public key for kid that verifies alg, fetching the set
// when it is stale or lacks kid.
func (j *JWKS) Key(ctx context.Context, kid, alg string) (any, error) {
	j.mu.Lock()
	k, ok := j.lookup(kid)
	now := time.Now()
	stale := now.Sub(j.fetched) > j.cfg.Refresh
	mayFetch := now.Sub(j.tried) >= j.cfg.MinInterval || j.tried.IsZero()
	j.mu.Unlock()
	if (!ok || stale) && mayFetch {
		if err := j.Refresh(ctx); err != nil && !ok {
			return nil, err
		}
		j.mu.Lock()
		k, ok = j.lookup(kid)
		j.mu.Unlock()
	}
	if !ok {
		j.mu.Lock()
		err, never := j.lastErr, j.fetched.IsZero()
		j.mu.Unlock()
		if err != nil && never {
			return nil, err
		}
		return nil, fmt.Errorf("no key for kid %q in the JWKS", kid)
	}
	if k.alg != "" && k.alg != alg {
		return nil, fmt.Errorf("key %q is for %s, not %s", kid, k.alg, alg)
	}
	switch pk := k.key.(type) {
	case *rsa.PublicKey:
		if !contains(rsaAlgs, alg) {
			return nil, fmt.Errorf("key %q is an RSA key, not a key for %s", kid, alg)
		}
	case *ecdsa.PublicKey:
		if curveAlg(pk.Curve) != alg {
			return nil, fmt.Errorf("key %q is not a key for %s", kid, alg)
		}
	}
	return k.key, nil
}

func (j *JWKS) lookup(kid string) (jwk, bool) {
	if k, ok := j.keys[kid]; ok {
		return k, true
	}
	if kid == "" && len(j.keys) == 1 {
		for _, k := range j.keys {
			return k, true
		}
	}
	return jwk{}, false
}

// Refresh fetches the set now. Concurrent callers share one fetch. On
// failure the keys fetched before stay in use and the error, a
// *JWKSError, is returned.
func (j *JWKS) Refresh(ctx context.Context) error {
	j.mu.Lock()
	if wait := j.fetchDone; wait != nil {
		j.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return &JWKSError{URL: j.cfg.URL, Err: ctx.Err()}
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.lastErr
	}
	done := make(chan struct{})
	j.fetchDone = done
	j.tried = time.Now()
	j.mu.Unlock()

	keys, err := j.fetch(ctx)

	j.mu.Lock()
	defer j.mu.Unlock()
	j.fetchDone = nil
	close(done)
	if err != nil {
		j.lastErr = &JWKSError{URL: j.cfg.URL, Err: err}
		j.cfg.Logger.Warn("JWKS fetch failed; keeping the keys fetched before", "url", j.cfg.URL, "keys", len(j.keys), "err", err)
		return j.lastErr
	}
	j.keys, j.fetched, j.lastErr = keys, time.Now(), nil
	return nil
}

func (j *JWKS) fetch(ctx context.Context) (map[string]jwk, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", maxJWKSBytes)
	}
	return parseJWKS(body)
}

// parseJWKS reads the signing keys of a JSON Web Key Set: RSA keys of at
// least 2048 bits and EC keys on P-256, P-384 and P-521. Keys meant for
// encryption ("use": "enc") and key types it does not know are skipped;
// a set with no usable key, or a malformed usable key, is an error.
func parseJWKS(data []byte) (map[string]jwk, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JSON key set: %w", err)
	}
	if set.Keys == nil {
		return nil, errors.New(`not a JSON key set: no "keys" array`)
	}
	keys := map[string]jwk{}
	for i, raw := range set.Keys {
		var k struct {
			Kty, Kid, Use, Alg, Crv string
			N, E, X, Y              string
		}
		if err := json.Unmarshal(raw, &k); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var key any
		var err error
		switch k.Kty {
		case "RSA":
			key, err = rsaKey(k.N, k.E)
		case "EC":
			key, err = ecKey(k.Crv, k.X, k.Y)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("key %d (kid %q): %w", i, k.Kid, err)
		}
		if k.Alg != "" && !contains(rsaAlgs, k.Alg) && !contains(ecdsaAlgs, k.Alg) {
			return nil, fmt.Errorf("key %d (kid %q): algorithm %q is not supported", i, k.Kid, k.Alg)
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, fmt.Errorf("key %d: kid %q appears twice", i, k.Kid)
		}
		keys[k.Kid] = jwk{key: key, alg: k.Alg}
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA or EC signing key in the set")
	}
	return keys, nil
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

func rsaKey(n, e string) (*rsa.PublicKey, error) {
	nb, err := b64(n)
	if err != nil || len(nb) == 0 {
		return nil, errors.New(`RSA key: "n" is not base64url`)
	}
	eb, err := b64(e)
	if err != nil || len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New(`RSA key: "e" is not a base64url integer`)
	}
	exp := int(new(big.Int).SetBytes(eb).Int64())
	if exp < 3 || exp%2 == 0 {
		return nil, fmt.Errorf("RSA key: exponent %d is not valid", exp)
	}
	key := &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: exp}
	if key.N.BitLen() < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits, want at least 2048", key.N.BitLen())
	}
	return key, nil
}

func ecKey(crv, x, y string) (*ecdsa.PublicKey, error) {
	var curve elliptic.Curve
	var size int
	switch crv {
	case "P-256":
		curve, size = elliptic.P256(), 32
	case "P-384":
		curve, size = elliptic.P384(), 48
	case "P-521":
		curve, size = elliptic.P521(), 66
	default:
		return nil, fmt.Errorf("EC key: curve %q is not supported", crv)
	}
	xb, err1 := b64(x)
	yb, err2 := b64(y)
	if err1 != nil || err2 != nil || len(xb) != size || len(yb) != size {
		return nil, fmt.Errorf(`EC key: "x" and "y" must be %d-byte base64url values`, size)
	}
	point := append(append([]byte{4}, xb...), yb...)
	key, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("EC key: %w", err)
	}
	return key, nil
}
