//go:build !race

package placement_test

// colocatedAllocBudget bounds TestAllocationBudgetColocated without and
// with a cached HS256 token. It was 10 and 15 (8 and 13 measured) before
// the Invocation of a call answered in-process was recycled.
var colocatedAllocBudget = [2]float64{7, 12}

const colocatedAllocMeasured = "6 and 11 measured"
