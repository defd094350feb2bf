package placement_test

import (
	"context"
	"testing"

	"github.com/fnmesh/fnmesh/meshtest"
)

// Allocations of a co-located call, caller and replica together, without
// a token check: the request id, the arguments' JSON, the request the
// replica runs, the argument, the reply, the result boxed. The goal
// is at most 10; the budget (colocatedAllocBudget) is what is measured
// and a little more, so a change that allocates more fails here and must
// say why. With a cached HS256 token, five more: the claims copied for the
// call, and the context values carrying claims and token. A function
// registered Inline, run on its caller's goroutine, allocates as many.
func TestAllocationBudgetColocated(t *testing.T) {
	open, hs256 := colocatedAllocBudget[0], colocatedAllocBudget[1]
	for _, tc := range []struct {
		name      string
		function  string
		withToken bool
		budget    float64
	}{
		{"open", "math.add", false, open},
		{"hs256", "math.add", true, hs256},
		{"inline", "math.addinline", false, open},
		{"inline-hs256", "math.addinline", true, hs256},
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
				t.Fatalf("%.1f allocations per co-located call, budget %.0f (%s)", got, tc.budget, colocatedAllocMeasured)
			}
		})
	}
}
