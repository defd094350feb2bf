//go:build race

package placement_test

// colocatedAllocBudget under the race detector, which allocates for its
// own bookkeeping.
var colocatedAllocBudget = [2]float64{9, 15}

const colocatedAllocMeasured = "8 and 13-14 measured under -race"
