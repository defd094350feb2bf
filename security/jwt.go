package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh"
)

// Verifier checks a token and returns its claims. Errors are
// *fnmesh.Error with code unauthenticated.
type Verifier interface {
	Verify(ctx context.Context, token string) (Claims, error)
}

// VerifierFunc adapts a function to Verifier.
type VerifierFunc func(ctx context.Context, token string) (Claims, error)

// Verify implements Verifier.
func (f VerifierFunc) Verify(ctx context.Context, token string) (Claims, error) { return f(ctx, token) }

// JWTConfig configures NewJWTVerifier. Give at least one of HMACSecret,
// RSAPublicKeys, ECDSAPublicKeys and JWKSURL.
type JWTConfig struct {
	// HMACSecret verifies HS256, HS384 and HS512 tokens. At least 32 bytes.
	HMACSecret []byte
	// RSAPublicKeys verify RS256, RS384 and RS512 tokens. A key is chosen
	// by the token's "kid" header; a token without a kid uses the key
	// under "", or the only key. A kid not in the map is rejected.
	RSAPublicKeys map[string]*rsa.PublicKey
	// ECDSAPublicKeys verify ES256 (P-256), ES384 (P-384) and ES512
	// (P-521) tokens, chosen by "kid" as RSAPublicKeys are. A key's curve
	// must match the token's algorithm.
	ECDSAPublicKeys map[string]*ecdsa.PublicKey
	// JWKSURL, when set, is where RSA and EC public keys are fetched (a
	// JSON Web Key Set, e.g. https://issuer/.well-known/jwks.json). Keys
	// given in RSAPublicKeys and ECDSAPublicKeys are looked up first.
	JWKSURL string
	// JWKSRefresh is how long fetched keys are used before they are
	// fetched again. Default 10m.
	JWKSRefresh time.Duration
	// JWKSMinInterval is the least time between two fetches, also when a
	// token names a kid the cached set lacks (a rotated key). Default 30s.
	JWKSMinInterval time.Duration
	// HTTPClient fetches the JWKS. Default: a client with a 5s timeout.
	HTTPClient *http.Client
	// Logger receives JWKS fetch failures. Default slog.Default().
	Logger *slog.Logger
	// Algorithms allowed, e.g. []string{"RS256"}. Default: the HMAC
	// algorithms if HMACSecret is set, the RSA ones if RSA keys or a JWKS
	// are set, the ECDSA ones if EC keys or a JWKS are set. "none" is
	// never accepted.
	Algorithms []string
	// Issuer, when set, must equal the "iss" claim.
	Issuer string
	// Audience, when set, must be among the "aud" claim.
	Audience string
	// Leeway tolerates clock skew on exp, nbf and iat. Default 30s;
	// negative means none.
	Leeway time.Duration
	// AllowNoExpiry accepts tokens without an "exp" claim. Default false:
	// a token must expire.
	AllowNoExpiry bool
}

var (
	hmacAlgs  = []string{"HS256", "HS384", "HS512"}
	rsaAlgs   = []string{"RS256", "RS384", "RS512"}
	ecdsaAlgs = []string{"ES256", "ES384", "ES512"}
)

// Validate reports every problem with c.
func (c JWTConfig) Validate() error {
	var errs []error
	hasRSA := len(c.RSAPublicKeys) > 0 || c.JWKSURL != ""
	hasEC := len(c.ECDSAPublicKeys) > 0 || c.JWKSURL != ""
	if len(c.HMACSecret) == 0 && !hasRSA && !hasEC {
		errs = append(errs, errors.New("security: JWTConfig needs HMACSecret, RSAPublicKeys, ECDSAPublicKeys or JWKSURL"))
	}
	if len(c.HMACSecret) > 0 && len(c.HMACSecret) < 32 {
		errs = append(errs, fmt.Errorf("security: JWTConfig.HMACSecret has %d bytes, want at least 32", len(c.HMACSecret)))
	}
	for kid, k := range c.RSAPublicKeys {
		if k == nil || k.N == nil || k.N.BitLen() < 2048 {
			errs = append(errs, fmt.Errorf("security: JWTConfig.RSAPublicKeys[%q]: want an RSA key of at least 2048 bits", kid))
		}
	}
	for kid, k := range c.ECDSAPublicKeys {
		if k == nil || curveAlg(k.Curve) == "" {
			errs = append(errs, fmt.Errorf("security: JWTConfig.ECDSAPublicKeys[%q]: want a P-256, P-384 or P-521 key", kid))
		}
	}
	if c.JWKSRefresh < 0 || c.JWKSMinInterval < 0 {
		errs = append(errs, errors.New("security: JWTConfig.JWKSRefresh and JWKSMinInterval must not be negative"))
	}
	for _, a := range c.Algorithms {
		switch {
		case contains(hmacAlgs, a) && len(c.HMACSecret) == 0:
			errs = append(errs, fmt.Errorf("security: algorithm %s needs HMACSecret", a))
		case contains(rsaAlgs, a) && !hasRSA:
			errs = append(errs, fmt.Errorf("security: algorithm %s needs RSAPublicKeys or JWKSURL", a))
		case contains(ecdsaAlgs, a) && !hasEC:
			errs = append(errs, fmt.Errorf("security: algorithm %s needs ECDSAPublicKeys or JWKSURL", a))
		case !contains(hmacAlgs, a) && !contains(rsaAlgs, a) && !contains(ecdsaAlgs, a):
			errs = append(errs, fmt.Errorf("security: algorithm %q is not supported", a))
		}
	}
	return errors.Join(errs...)
}

// curveAlg returns the JWS algorithm that signs with keys on curve c.
func curveAlg(c elliptic.Curve) string {
	switch c {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// JWTVerifier verifies JSON Web Tokens.
type JWTVerifier struct {
	cfg    JWTConfig
	parser *jwt.Parser
	jwks   *JWKS // nil without JWKSURL
}

// NewJWTVerifier returns a Verifier for cfg.
func NewJWTVerifier(cfg JWTConfig) (*JWTVerifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Algorithms) == 0 {
		if len(cfg.HMACSecret) > 0 {
			cfg.Algorithms = append(cfg.Algorithms, hmacAlgs...)
		}
		if len(cfg.RSAPublicKeys) > 0 || cfg.JWKSURL != "" {
			cfg.Algorithms = append(cfg.Algorithms, rsaAlgs...)
		}
		if len(cfg.ECDSAPublicKeys) > 0 || cfg.JWKSURL != "" {
			cfg.Algorithms = append(cfg.Algorithms, ecdsaAlgs...)
		}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	// Strict base64: a token has one spelling, so a signature cannot be
	// varied in its unused bits.
	opts := []jwt.ParserOption{jwt.WithValidMethods(cfg.Algorithms), jwt.WithIssuedAt(), jwt.WithStrictDecoding()}
	if cfg.Leeway > 0 {
		opts = append(opts, jwt.WithLeeway(cfg.Leeway))
	}
	if !cfg.AllowNoExpiry {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v := &JWTVerifier{cfg: cfg, parser: jwt.NewParser(opts...)}
	if cfg.JWKSURL != "" {
		v.jwks = NewJWKS(JWKSConfig{URL: cfg.JWKSURL, Refresh: cfg.JWKSRefresh, MinInterval: cfg.JWKSMinInterval, HTTPClient: cfg.HTTPClient, Logger: cfg.Logger})
	}
	return v, nil
}

// JWKS returns the key set the verifier fetches, or nil without
// JWTConfig.JWKSURL.
func (v *JWTVerifier) JWKS() *JWKS { return v.jwks }

// Verify implements Verifier.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (Claims, error) {
	if token == "" {
		return nil, fnmesh.NewError(fnmesh.CodeUnauthenticated, "missing token")
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) { return v.key(ctx, t) })
	if err != nil {
		return nil, &fnmesh.Error{Code: fnmesh.CodeUnauthenticated, Message: tokenProblem(err)}
	}
	return Claims(claims), nil
}

func (v *JWTVerifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	alg, _ := t.Header["alg"].(string)
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		return v.cfg.HMACSecret, nil
	case *jwt.SigningMethodRSA:
		if k := pick(v.cfg.RSAPublicKeys, kid); k != nil {
			return k, nil
		}
	case *jwt.SigningMethodECDSA:
		if k := pick(v.cfg.ECDSAPublicKeys, kid); k != nil {
			if curveAlg(k.Curve) != alg {
				return nil, fmt.Errorf("key %q is not a key for %s", kid, alg)
			}
			return k, nil
		}
	default:
		return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
	}
	if v.jwks != nil {
		return v.jwks.Key(ctx, kid, alg)
	}
	return nil, fmt.Errorf("no key for kid %q", kid)
}

// pick returns the key under kid; a token without a kid uses the key
// under "", or the only key.
func pick[K any](keys map[string]*K, kid string) *K {
	if k, ok := keys[kid]; ok {
		return k
	}
	if kid == "" && len(keys) == 1 {
		for _, k := range keys {
			return k
		}
	}
	return nil
}

// tokenProblem says why a token failed, without echoing the token.
func tokenProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "token issued in the future"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "token lacks a required claim: " + err.Error()
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "token has the wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "token has the wrong audience"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "token signature is invalid"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token cannot be verified: " + err.Error()
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token is malformed"
	}
	return "token rejected: " + err.Error()
}

// Signer mints tokens, for callers and tests.
type Signer struct {
	method jwt.SigningMethod
	key    any
	kid    string
	// Issuer and Audience, when set, are added to every token.
	Issuer   string
	Audience string
}

// NewHS256Signer signs with a shared secret.
func NewHS256Signer(secret []byte) *Signer {
	return &Signer{method: jwt.SigningMethodHS256, key: secret}
}

// NewRS256Signer signs with an RSA private key; kid, if not empty, goes in
// the token header.
func NewRS256Signer(key *rsa.PrivateKey, kid string) *Signer {
	return &Signer{method: jwt.SigningMethodRS256, key: key, kid: kid}
}

// NewES256Signer signs with a P-256 private key; kid, if not empty, goes
// in the token header.
func NewES256Signer(key *ecdsa.PrivateKey, kid string) *Signer {
	return &Signer{method: jwt.SigningMethodES256, key: key, kid: kid}
}

// Sign returns a token for subject valid for ttl, with extra claims added.
func (s *Signer) Sign(subject string, ttl time.Duration, extra Claims) (string, error) {
	now := time.Now()
	c := jwt.MapClaims{"sub": subject, "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
	if s.Issuer != "" {
		c["iss"] = s.Issuer
	}
	if s.Audience != "" {
		c["aud"] = s.Audience
	}
	for k, v := range extra {
		c[k] = v
	}
	t := jwt.NewWithClaims(s.method, c)
	if s.kid != "" {
		t.Header["kid"] = s.kid
	}
	return t.SignedString(s.key)
}

// SignClaims signs exactly the given claims (no sub, iat or exp added).
func (s *Signer) SignClaims(c Claims) (string, error) {
	t := jwt.NewWithClaims(s.method, jwt.MapClaims(c))
	if s.kid != "" {
		t.Header["kid"] = s.kid
	}
	return t.SignedString(s.key)
}
