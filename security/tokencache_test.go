package security

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// countingVerifier accepts tokens "ok-<exp unix>" and counts calls.
type countingVerifier struct{ calls atomic.Int64 }

func (v *countingVerifier) Verify(_ context.Context, token string) (Claims, error) {
	v.calls.Add(1)
	var exp int64
	if _, err := fmt.Sscanf(token, "ok-%d", &exp); err != nil {
		return nil, errors.New("bad token")
	}
	c := Claims{"sub": "me"}
	if exp != 0 {
		c["exp"] = float64(exp)
	}
	return c, nil
}

func TestTokenCacheVerifiesOnceUntilExpiry(t *testing.T) {
	inner := &countingVerifier{}
	v := CacheVerified(inner, TokenCacheConfig{})
	ctx := context.Background()
	tok := fmt.Sprintf("ok-%d", time.Now().Add(time.Hour).Unix())
	for i := 0; i < 5; i++ {
		c, err := v.Verify(ctx, tok)
		if err != nil || c.Subject() != "me" {
			t.Fatalf("verify %d: %v %v", i, c, err)
		}
		c["sub"] = "changed by a function" // must not reach the next call
	}
	if n := inner.calls.Load(); n != 1 {
		t.Fatalf("inner verifier called %d times for one token, want 1", n)
	}
	// Rejected tokens are never kept.
	for i := 0; i < 3; i++ {
		if _, err := v.Verify(ctx, "forged"); err == nil {
			t.Fatal("forged token accepted")
		}
	}
	if n := inner.calls.Load(); n != 4 {
		t.Fatalf("inner verifier called %d times, want 4 (rejections are not cached)", n)
	}
	// A token that expired is verified again (and refused by the inner
	// verifier in real life); one without exp is never cached.
	expired := fmt.Sprintf("ok-%d", time.Now().Add(-time.Second).Unix())
	v.Verify(ctx, expired)
	v.Verify(ctx, expired)
	noExp := "ok-0"
	v.Verify(ctx, noExp)
	v.Verify(ctx, noExp)
	if n := inner.calls.Load(); n != 8 {
		t.Fatalf("inner verifier called %d times, want 8", n)
	}
	if l := v.(*TokenCache).Len(); l != 1 {
		t.Fatalf("%d tokens kept, want 1", l)
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	inner := &countingVerifier{}
	v := CacheVerified(inner, TokenCacheConfig{MaxEntries: 10, MaxAge: 50 * time.Millisecond})
	exp := time.Now().Add(time.Hour).Unix()
	for i := 0; i < 100; i++ {
		v.Verify(context.Background(), fmt.Sprintf("ok-%d-%d", exp, i))
	}
	if l := v.(*TokenCache).Len(); l > 10 {
		t.Fatalf("%d tokens kept, bound 10", l)
	}
	tok := fmt.Sprintf("ok-%d", exp)
	v.Verify(context.Background(), tok)
	before := inner.calls.Load()
	time.Sleep(60 * time.Millisecond) // past MaxAge: the point of the test
	v.Verify(context.Background(), tok)
	if inner.calls.Load() != before+1 {
		t.Fatal("token trusted past MaxAge")
	}
}
