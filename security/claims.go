package security

import (
	"context"
	"slices"
)

// Claims are a verified token's claims, as decoded from its JSON payload.
type Claims map[string]any

// Subject returns the "sub" claim.
func (c Claims) Subject() string { return c.String("sub") }

// String returns the claim name if it is a string, or "".
func (c Claims) String(name string) string {
	s, _ := c[name].(string)
	return s
}

// Strings returns the claim name as a list of strings: a JSON array of
// strings, or a single string (split on spaces, as OAuth's "scope" is).
func (c Claims) Strings(name string) []string {
	switch v := c[name].(type) {
	case string:
		return splitSpaces(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case []string:
		return v
	}
	return nil
}

// Roles returns the "roles" claim, or the "role" claim as a single role.
func (c Claims) Roles() []string {
	if r := c.Strings("roles"); r != nil {
		return r
	}
	return c.Strings("role")
}

// HasRole reports whether role is among Roles.
func (c Claims) HasRole(role string) bool { return slices.Contains(c.Roles(), role) }

func splitSpaces(s string) []string {
	var out []string
	start := -1
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' {
			if start >= 0 {
				out = append(out, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return out
}

type claimsKey struct{}

// WithClaims returns ctx carrying claims.
func WithClaims(ctx context.Context, c Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFromContext returns the verified claims of the caller of the
// running function; ok is false when the function runs without a token
// check or the caller sent no token.
func ClaimsFromContext(ctx context.Context) (c Claims, ok bool) {
	c, ok = ctx.Value(claimsKey{}).(Claims)
	return c, ok
}

type tokenKey struct{}

// WithToken returns ctx carrying the caller's raw token, so that a
// function can forward it on the calls it makes (see client.ForwardToken).
func WithToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, tokenKey{}, token)
}

// TokenFromContext returns the raw token of the caller of the running
// function, or "".
func TokenFromContext(ctx context.Context) string {
	t, _ := ctx.Value(tokenKey{}).(string)
	return t
}
