//go:build race

package integration

// redisAllocBudget under the race detector, which allocates for its own
// bookkeeping: about 10% over what was measured.
const redisAllocBudget = 36

const redisAllocMeasured = "33 measured under -race"
