package security

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
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

// JWTConfig configures NewJWTVerifier. Give HMACSecret, RSAPublicKeys, or
// both.
type JWTConfig struct {
	// HMACSecret verifies HS256, HS384 and HS512 tokens. At least 32 bytes.
	HMACSecret []byte
	// RSAPublicKeys verify RS256, RS384 and RS512 tokens. A key is chosen
	// by the token's "kid" header; a token without a kid uses the key
	// under "", or the only key. A kid not in the map is rejected.
	RSAPublicKeys map[string]*rsa.PublicKey
	// Algorithms allowed, e.g. []string{"RS256"}. Default: the HMAC
	// algorithms if HMACSecret is set, the RSA ones if keys are set.
	// "none" is never accepted.
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
	hmacAlgs = []string{"HS256", "HS384", "HS512"}
	rsaAlgs  = []string{"RS256", "RS384", "RS512"}
)

// Validate reports every problem with c.
func (c JWTConfig) Validate() error {
	var errs []error
	if len(c.HMACSecret) == 0 && len(c.RSAPublicKeys) == 0 {
		errs = append(errs, errors.New("security: JWTConfig needs HMACSecret or RSAPublicKeys"))
	}
	if len(c.HMACSecret) > 0 && len(c.HMACSecret) < 32 {
		errs = append(errs, fmt.Errorf("security: JWTConfig.HMACSecret has %d bytes, want at least 32", len(c.HMACSecret)))
	}
	for _, a := range c.Algorithms {
		switch {
		case contains(hmacAlgs, a) && len(c.HMACSecret) == 0:
			errs = append(errs, fmt.Errorf("security: algorithm %s needs HMACSecret", a))
		case contains(rsaAlgs, a) && len(c.RSAPublicKeys) == 0:
			errs = append(errs, fmt.Errorf("security: algorithm %s needs RSAPublicKeys", a))
		case !contains(hmacAlgs, a) && !contains(rsaAlgs, a):
			errs = append(errs, fmt.Errorf("security: algorithm %q is not supported", a))
		}
	}
	return errors.Join(errs...)
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
		if len(cfg.RSAPublicKeys) > 0 {
			cfg.Algorithms = append(cfg.Algorithms, rsaAlgs...)
		}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(cfg.Algorithms), jwt.WithIssuedAt()}
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
	return &JWTVerifier{cfg: cfg, parser: jwt.NewParser(opts...)}, nil
}

// Verify implements Verifier.
func (v *JWTVerifier) Verify(_ context.Context, token string) (Claims, error) {
	if token == "" {
		return nil, fnmesh.NewError(fnmesh.CodeUnauthenticated, "missing token")
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, v.key)
	if err != nil {
		return nil, &fnmesh.Error{Code: fnmesh.CodeUnauthenticated, Message: tokenProblem(err)}
	}
	return Claims(claims), nil
}

func (v *JWTVerifier) key(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		return v.cfg.HMACSecret, nil
	case *jwt.SigningMethodRSA:
		kid, _ := t.Header["kid"].(string)
		if k, ok := v.cfg.RSAPublicKeys[kid]; ok {
			return k, nil
		}
		if kid == "" && len(v.cfg.RSAPublicKeys) == 1 {
			for _, k := range v.cfg.RSAPublicKeys {
				return k, nil
			}
		}
		return nil, fmt.Errorf("no key for kid %q", kid)
	}
	return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
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
