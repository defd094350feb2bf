package meshtest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/security"
)

// testPolicy: a YAML policy decides per function, before validation and
// before the function runs.
func testPolicy(t *testing.T, h *Harness) {
	policy, err := security.ParsePolicy([]byte(`
default: deny
functions:
  add: allow
  whoami: authenticated
  stats:
    match: {field: claims.roles, op: contains, value: admin}
  transfer:
    and:
      - authenticated
      - match: {field: args.from, ref: claims.sub}
  add@v2:
    match: {field: claims.tier, op: in, value: [gold]}
`))
	if err != nil {
		t.Fatal(err)
	}
	v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	name := Name("bank")
	svc := handlers.NewService(name, handlers.Config{Auth: v, Policy: policy, Logger: Quiet})
	var runs atomic.Int64
	type TransferIn struct {
		From   string `json:"from"`
		Amount int    `json:"amount" validate:"gt=0"`
	}
	count := func(ctx context.Context, in TransferIn) (string, error) { runs.Add(1); return "done", nil }
	handlers.Register(svc, "add", add)
	handlers.Register(svc, "add@v2", add)
	handlers.Register(svc, "whoami", whoami)
	handlers.Register(svc, "stats", count)
	handlers.Register(svc, "transfer", count)
	handlers.Register(svc, "secret", count) // no rule: denied by default
	handlers.Register(svc, "ping", func(context.Context, struct{}) (string, error) { return "pong", nil }, handlers.Public())
	h.Start(svc)

	signer := security.NewHS256Signer(testSecret)
	alice, _ := signer.Sign("alice", time.Minute, security.Claims{"roles": []string{"user"}, "tier": "gold"})
	admin, _ := signer.Sign("root", time.Minute, security.Claims{"roles": []string{"admin"}})
	expired, _ := signer.Sign("alice", -time.Hour, nil)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	ok := TransferIn{From: "alice", Amount: 5}
	cases := []struct {
		label, fn, token string
		in               any
		want             fnmesh.Code // "" = runs
	}{
		{"allow without token", "add", "", AddIn{A: 1, B: 2}, ""},
		{"allow with a bad token", "add", expired, AddIn{A: 1, B: 2}, fnmesh.CodeUnauthenticated},
		{"authenticated without token", "whoami", "", struct{}{}, fnmesh.CodeUnauthenticated},
		{"authenticated with token", "whoami", alice, struct{}{}, ""},
		{"match claim: no role", "stats", alice, ok, fnmesh.CodePermissionDenied},
		{"match claim: admin", "stats", admin, ok, ""},
		{"match claim: no token", "stats", "", ok, fnmesh.CodeUnauthenticated},
		{"match arg with claim: own account", "transfer", alice, ok, ""},
		{"match arg with claim: other account", "transfer", alice, TransferIn{From: "bob", Amount: 5}, fnmesh.CodePermissionDenied},
		{"denied before validation", "transfer", alice, TransferIn{From: "bob", Amount: -1}, fnmesh.CodePermissionDenied},
		{"validation after the rule", "transfer", alice, TransferIn{From: "alice", Amount: -1}, fnmesh.CodeInvalidArgument},
		{"no rule: default deny", "secret", admin, ok, fnmesh.CodePermissionDenied},
		{"public function", "ping", "", struct{}{}, ""},
		{"versioned function: tier gold", "add@v2", alice, AddIn{A: 1}, ""},
		{"versioned function: no tier", "add@v2", admin, AddIn{A: 1}, fnmesh.CodePermissionDenied},
	}
	for _, tc := range cases {
		before := runs.Load()
		err := c.Call(context.Background(), fn(name, tc.fn), tc.in, nil, client.WithToken(tc.token))
		if got := fnmesh.CodeOf(err); got != tc.want {
			t.Errorf("%s: got %q (%v), want %q", tc.label, got, err, tc.want)
		}
		if tc.want != "" && runs.Load() != before {
			t.Errorf("%s: the function ran although the call was refused", tc.label)
		}
	}
}

// testPolicyConfigErrors: a policy that names a function the service
// lacks, or contradicts Public(), or has no verifier, stops Run.
func testPolicyConfigErrors(t *testing.T, h *Harness) {
	v, _ := security.NewJWTVerifier(security.JWTConfig{HMACSecret: testSecret})
	typo := &security.Policy{Functions: map[string]security.Rule{"ad": security.Allow()}}
	svc := handlers.NewService(Name("p"), handlers.Config{Auth: v, Policy: typo, Logger: Quiet})
	handlers.Register(svc, "add", add)
	if err := svc.Run(context.Background(), h.Bus); err == nil {
		t.Error("Run accepted a policy naming a function the service does not have")
	}
	contra := &security.Policy{Functions: map[string]security.Rule{"add": security.Deny()}}
	svc = handlers.NewService(Name("p"), handlers.Config{Auth: v, Policy: contra, Logger: Quiet})
	handlers.Register(svc, "add", add, handlers.Public())
	if err := svc.Run(context.Background(), h.Bus); err == nil {
		t.Error("Run accepted a Public() function the policy denies")
	}
	svc = handlers.NewService(Name("p"), handlers.Config{AllowUnauthenticated: true, Policy: &security.Policy{}, Logger: Quiet})
	handlers.Register(svc, "add", add)
	if err := svc.Run(context.Background(), h.Bus); err == nil {
		t.Error("Run accepted a policy without a token verifier")
	}
}

// testServiceIdentity: inside a function, a call to another service
// goes with the service's own token (AsService, the default) or with the
// caller's (ForwardToken), as the call site says.
func testServiceIdentity(t *testing.T, h *Harness) {
	back, signer := securedService(t, Name("back"))
	handlers.Register(back, "whoami", whoami)
	h.Start(back)
	own, _ := signer.Sign("front-service", time.Minute, nil)
	inner := h.Client(client.Config{Token: own})
	front, _ := securedService(t, Name("front"))
	relay := func(opt func(context.Context) client.CallOption) func(context.Context, struct{}) (string, error) {
		return func(ctx context.Context, _ struct{}) (string, error) {
			var sub string
			err := inner.Call(ctx, fn(back.Name(), "whoami"), struct{}{}, &sub, opt(ctx))
			return sub, err
		}
	}
	handlers.Register(front, "as-service", relay(func(context.Context) client.CallOption { return client.AsService() }))
	handlers.Register(front, "forward", relay(client.ForwardToken))
	handlers.Register(front, "override-then-as-service", func(ctx context.Context, _ struct{}) (string, error) {
		var sub string
		err := inner.Call(ctx, fn(back.Name(), "whoami"), struct{}{}, &sub, client.ForwardToken(ctx), client.AsService())
		return sub, err
	})
	h.Start(front)
	alice, _ := signer.Sign("alice", time.Minute, nil)
	c := h.Client(client.Config{Token: alice})
	for f, want := range map[string]string{"as-service": "front-service", "forward": "alice", "override-then-as-service": "front-service"} {
		var got string
		if err := c.Call(context.Background(), fn(front.Name(), f), struct{}{}, &got); err != nil || got != want {
			t.Errorf("%s: callee saw %q (%v), want %q", f, got, err, want)
		}
	}
}
