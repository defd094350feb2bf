//go:build race

package client_test

// memoryAllocBudget under the race detector, which allocates for its own
// bookkeeping: about 10% over what was measured.
const memoryAllocBudget = 27

const memoryAllocMeasured = "24 measured under -race"
