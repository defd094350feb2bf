package security

import (
	"context"
	"maps"
	"sync"
	"time"
)

// TokenCacheConfig configures CacheVerified. Zero values take the
// defaults written on each field.
type TokenCacheConfig struct {
	// MaxEntries bounds how many verified tokens are kept. Default 10000.
	MaxEntries int
	// MaxAge bounds how long a token is trusted without being verified
	// again, also when it expires later: a key removed from a JWKS stops
	// admitting its tokens within this time. Default 10m (the JWKS
	// refresh's default).
	MaxAge time.Duration
	// MaxTokenBytes: longer tokens are verified every time, not kept.
	// Default 4096.
	MaxTokenBytes int
}

func (c *TokenCacheConfig) setDefaults() {
	if c.MaxEntries <= 0 {
		c.MaxEntries = 10000
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 10 * time.Minute
	}
	if c.MaxTokenBytes <= 0 {
		c.MaxTokenBytes = 4096
	}
}

// TokenCache is a Verifier that remembers the tokens another Verifier
// accepted, keyed by the token itself, until the token's "exp" (or
// MaxAge, whichever is first): a caller that sends the same token with
// every call is verified once, not on every call. Only accepted tokens
// are kept; a token without "exp" is verified every time. Each call gets
// its own copy of the claims.
type TokenCache struct {
	next Verifier
	cfg  TokenCacheConfig
	mu   sync.RWMutex
	m    map[string]cachedToken
}

type cachedToken struct {
	claims Claims
	until  time.Time
}

var _ Verifier = (*TokenCache)(nil)

// CacheVerified returns v behind a TokenCache; v itself if it is one.
func CacheVerified(v Verifier, cfg TokenCacheConfig) Verifier {
	if _, ok := v.(*TokenCache); ok || v == nil {
		return v
	}
	cfg.setDefaults()
	return &TokenCache{next: v, cfg: cfg, m: map[string]cachedToken{}}
}

// Verify implements Verifier.
func (c *TokenCache) Verify(ctx context.Context, token string) (Claims, error) {
	now := time.Now()
	c.mu.RLock()
	e, ok := c.m[token]
	c.mu.RUnlock()
	if ok && now.Before(e.until) {
		return maps.Clone(e.claims), nil
	}
	claims, err := c.next.Verify(ctx, token)
	if err != nil {
		if ok {
			c.forget(token)
		}
		return nil, err
	}
	if until, keep := c.keepUntil(claims, now); keep && len(token) <= c.cfg.MaxTokenBytes {
		c.store(token, cachedToken{claims: maps.Clone(claims), until: until}, now)
	}
	return claims, nil
}

// keepUntil returns when a token with claims stops being trusted from
// the cache: its expiry, capped by MaxAge.
func (c *TokenCache) keepUntil(claims Claims, now time.Time) (time.Time, bool) {
	var exp time.Time
	switch v := claims["exp"].(type) {
	case float64:
		exp = time.Unix(int64(v), 0)
	case int64:
		exp = time.Unix(v, 0)
	case int:
		exp = time.Unix(int64(v), 0)
	default:
		return time.Time{}, false
	}
	if limit := now.Add(c.cfg.MaxAge); limit.Before(exp) {
		exp = limit
	}
	return exp, now.Before(exp)
}

func (c *TokenCache) store(token string, e cachedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.cfg.MaxEntries {
		for k, old := range c.m {
			if !now.Before(old.until) {
				delete(c.m, k)
			}
		}
		for k := range c.m { // still full: drop arbitrary entries
			if len(c.m) < c.cfg.MaxEntries {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[token] = e
}

func (c *TokenCache) forget(token string) {
	c.mu.Lock()
	delete(c.m, token)
	c.mu.Unlock()
}

// Len returns how many tokens are kept.
func (c *TokenCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
