package meshtest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/security"
)

// testIdemKeyNeedsAuthorization: a stored result is handed only to a
// caller who passes the token check, the access rule and the function's
// role requirement, and a key is scoped to the caller's subject.
func testIdemKeyNeedsAuthorization(t *testing.T, h *Harness) {
	policy, err := security.ParsePolicy([]byte(`
default: authenticated
functions:
  ruled:
    match: {field: claims.roles, op: contains, value: admin}
`))
	if err != nil {
		t.Fatal(err)
	}
	v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	plain, signer := securedService(t, Name("idauth"))
	ruled := handlers.NewService(Name("idrule"), handlers.Config{Auth: v, Policy: policy, Logger: Quiet})
	var runs atomic.Int64
	secret := func(ctx context.Context, _ struct{}) (string, error) {
		return "secret-" + handlers.Info(ctx).Function + "-" + string(rune('0'+runs.Add(1))), nil
	}
	handlers.Register(plain, "admin", secret, handlers.RequireRole("admin"))
	handlers.Register(ruled, "ruled", secret)
	h.Start(plain)
	h.Start(ruled)

	root, _ := signer.Sign("root", time.Minute, security.Claims{"roles": []string{"admin"}})
	other, _ := signer.Sign("other-admin", time.Minute, security.Claims{"roles": []string{"admin"}})
	user, _ := signer.Sign("alice", time.Minute, security.Claims{"roles": []string{"user"}})
	expired, _ := signer.Sign("root", -time.Hour, security.Claims{"roles": []string{"admin"}})
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	key := client.WithIdempotencyKey("order-1")
	for _, function := range []string{fn(plain.Name(), "admin"), fn(ruled.Name(), "ruled")} {
		var first string
		if err := c.Call(context.Background(), function, struct{}{}, &first, client.WithToken(root), key); err != nil {
			t.Fatalf("%s as admin: %v", function, err)
		}
		ran := runs.Load()
		for _, tc := range []struct {
			label, token string
			want         fnmesh.Code
		}{
			{"no token", "", fnmesh.CodeUnauthenticated},
			{"expired token", expired, fnmesh.CodeUnauthenticated},
			{"token without the role", user, fnmesh.CodePermissionDenied},
		} {
			var got string
			err := c.Call(context.Background(), function, struct{}{}, &got, client.WithToken(tc.token), key)
			if got != "" {
				t.Errorf("%s with %s and the admin's key got the stored result %q", function, tc.label, got)
			}
			WantCode(t, err, tc.want)
		}
		if n := runs.Load(); n != ran {
			t.Fatalf("%s ran %d times for refused callers", function, n-ran)
		}
		var again, others string
		if err := c.Call(context.Background(), function, struct{}{}, &again, client.WithToken(root), key); err != nil {
			t.Fatal(err)
		}
		if err := c.Call(context.Background(), function, struct{}{}, &others, client.WithToken(other), key); err != nil {
			t.Fatal(err)
		}
		if again != first || others == first || runs.Load() != ran+1 {
			t.Fatalf("%s: first %q, same subject again %q, another subject %q (runs %d, want %d): want the first result once more, and a run of its own for the other subject",
				function, first, again, others, runs.Load(), ran+1)
		}
	}
}

// testIdemKeyScopedToFunction: a key first used on one function does not
// answer a call of another function of the service; that one runs.
func testIdemKeyScopedToFunction(t *testing.T, h *Harness) {
	name := Name("idfn")
	svc := openService(name)
	var aRuns, bRuns atomic.Int64
	handlers.Register(svc, "harmless", func(context.Context, struct{}) (string, error) { aRuns.Add(1); return "harmless", nil })
	handlers.Register(svc, "wipe", func(context.Context, struct{}) (string, error) { bRuns.Add(1); return "wiped", nil })
	handlers.Register(svc, "wipe@v2", func(context.Context, struct{}) (string, error) { bRuns.Add(1); return "wiped v2", nil })
	h.Start(svc)
	c := h.Client(client.Config{})
	key := client.WithIdempotencyKey("k")
	var a, b, b2 string
	for _, call := range []struct {
		function string
		out      *string
	}{{"harmless", &a}, {"wipe", &b}, {"wipe@v2", &b2}} {
		if err := c.Call(context.Background(), fn(name, call.function), struct{}{}, call.out, key); err != nil {
			t.Fatalf("%s: %v", call.function, err)
		}
	}
	if a != "harmless" || b != "wiped" || b2 != "wiped v2" || aRuns.Load() != 1 || bRuns.Load() != 2 {
		t.Fatalf("results %q %q %q, runs %d %d: want each function to run once under the same key", a, b, b2, aRuns.Load(), bRuns.Load())
	}
}

// testIdemKeyWithOtherArguments: a key reused with different arguments is
// refused with invalid_argument, on a call and on a send; the same
// arguments still get the first result.
func testIdemKeyWithOtherArguments(t *testing.T, h *Harness) {
	name := Name("idargs")
	svc := openService(name, func(c *handlers.Config) {
		c.Retry = handlers.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond}
	})
	var runs atomic.Int64
	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (AddOut, error) { runs.Add(1); return add(ctx, in) })
	h.Start(svc)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	key := client.WithIdempotencyKey("pay-7")
	var first, again AddOut
	if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 1, B: 2}, &first, key); err != nil {
		t.Fatal(err)
	}
	var other AddOut
	err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 1, B: 1000}, &other, key)
	fe := WantCode(t, err, fnmesh.CodeInvalidArgument)
	if !strings.Contains(fe.Message, "different arguments") {
		t.Errorf("message %q does not say the key was used with different arguments", fe.Message)
	}
	if err := c.Call(context.Background(), fn(name, "add"), AddIn{A: 1, B: 2}, &again, key); err != nil {
		t.Fatal(err)
	}
	if first.Sum != 3 || again.Sum != 3 || other.Sum != 0 || runs.Load() != 1 {
		t.Fatalf("sums %d %d %d, runs %d: want 3, 3, none and one run", first.Sum, again.Sum, other.Sum, runs.Load())
	}
	// A send with the key and other arguments is dead-lettered with the
	// same reason, not dropped.
	if err := c.Send(context.Background(), fn(name, "add"), AddIn{A: 5, B: 5}, key); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		dead, err := h.Bus.DeadLetters(context.Background(), name, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) == 1 {
			if dead[0].Code != fnmesh.CodeInvalidArgument || !strings.Contains(dead[0].Reason, "different arguments") {
				t.Fatalf("dead letter %+v: want invalid_argument about different arguments", dead[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("send with a reused key and other arguments: %d dead letters, want 1", len(dead))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if runs.Load() != 1 {
		t.Fatalf("runs %d, want 1", runs.Load())
	}
}

// testIdemKeySharedAcrossPaths: a key stored by a call over the bus
// answers the same caller's call on the co-located path, and the other
// way round. Without co-location both clients call over the bus.
func testIdemKeySharedAcrossPaths(t *testing.T, h *Harness) {
	name := Name("idpath")
	svc := openService(name)
	var runs atomic.Int64
	handlers.Register(svc, "next", func(context.Context, struct{}) (int64, error) { return runs.Add(1), nil })
	h.Start(svc)
	local := h.Client(client.Config{Name: "shop"})
	overBus, err := client.New(h.Bus, client.Config{Name: "shop", Logger: Quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { overBus.Close() })
	for i, pair := range [][2]*client.Client{{overBus, local}, {local, overBus}} {
		key := client.WithIdempotencyKey(fmt.Sprintf("shared-%d", i))
		var first, second int64
		if err := pair[0].Call(context.Background(), fn(name, "next"), struct{}{}, &first, key); err != nil {
			t.Fatal(err)
		}
		if err := pair[1].Call(context.Background(), fn(name, "next"), struct{}{}, &second, key); err != nil {
			t.Fatal(err)
		}
		if first != int64(i+1) || second != first {
			t.Fatalf("round %d: first %d, second %d: want the second call to get the first's result", i, first, second)
		}
	}
	if runs.Load() != 2 {
		t.Fatalf("runs %d, want 2 (one per key)", runs.Load())
	}
}
