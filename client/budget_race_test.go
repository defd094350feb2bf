//go:build race

package client_test

// memoryAllocBudget under the race detector, which allocates for its own
// bookkeeping: about 10% over what was measured.
const memoryAllocBudget = 42

const memoryAllocMeasured = "38 measured under -race"
