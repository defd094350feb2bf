package placement_test

import (
	"context"
	"testing"

	"github.com/fnmesh/fnmesh/meshtest"
)

// Allocations of a co-located call, caller and replica together, without
// a token check: 8 measured, 10 under -race (the Invocation, the
// arguments' JSON, the request the replica keeps, the reply, the result
// boxed, the result assigned). The goal is at most 10; a change that
// allocates more fails here and must say why. With a cached HS256 token:
// 13, 15 under -race (the claims copied for the call, and the two context
// values carrying claims and token). A function registered Inline, run on
// its caller's goroutine, allocates as many.
func TestAllocationBudgetColocated(t *testing.T) {
	for _, tc := range []struct {
		name      string
		function  string
		withToken bool
		budget    float64
	}{
		{"open", "math.add", false, 10},
		{"hs256", "math.add", true, 15},
		{"inline", "math.addinline", false, 10},
		{"inline-hs256", "math.addinline", true, 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := colocated(t, true, tc.withToken)
			ctx := context.Background()
			call := func() {
				var out benchOut
				if err := c.Call(ctx, tc.function, benchIn{A: 1, B: 2}, &out); err != nil || out.Sum != 3 {
					t.Fatalf("call: %v %+v", err, out)
				}
			}
			got := meshtest.AllocsPerCall(call)
			t.Logf("%.1f allocations per co-located call (budget %.0f)", got, tc.budget)
			if got > tc.budget {
				t.Fatalf("%.1f allocations per co-located call, budget %.0f", got, tc.budget)
			}
		})
	}
}
