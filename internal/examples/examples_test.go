package examples_test

import (
	"context"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/bus/bustest"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/security"
)

// The example policy file fits the example math service and decides as
// its comments say.
func TestMathPolicyFile(t *testing.T) {
	p, err := security.LoadPolicy("../../cmd/examples/math/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := bustest.NewHarness(t, bus.NewMemory())
	h.Start(examples.Math(handlers.Config{Auth: examples.Verifier(), Policy: p, Logger: bustest.Quiet}))
	sign := func(c security.Claims) string {
		tok, _ := security.NewHS256Signer(examples.Secret()).Sign("u", time.Minute, c)
		return tok
	}
	user, gold, admin := sign(nil), sign(security.Claims{"tier": "gold"}), sign(security.Claims{"roles": []string{"admin"}})
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})
	cases := []struct {
		fn, token string
		in        any
		want      fnmesh.Code
	}{
		{"add", "", examples.AddIn{A: 1}, ""},
		{"div", "", examples.DivIn{A: 1, B: 1}, fnmesh.CodeUnauthenticated},
		{"div", user, examples.DivIn{A: 1, B: 1}, ""},
		{"sqrt", user, examples.SqrtIn{X: 4}, fnmesh.CodePermissionDenied},
		{"sqrt", gold, examples.SqrtIn{X: 4}, ""},
		{"stats", gold, struct{}{}, fnmesh.CodePermissionDenied},
		{"stats", admin, struct{}{}, ""},
	}
	for _, tc := range cases {
		err := c.Call(context.Background(), "math."+tc.fn, tc.in, nil, client.WithToken(tc.token))
		if got := fnmesh.CodeOf(err); got != tc.want {
			t.Errorf("math.%s: %q (%v), want %q", tc.fn, got, err, tc.want)
		}
	}
}
