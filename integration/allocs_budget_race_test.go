//go:build race

package integration

// redisAllocBudget under the race detector, which allocates for its own
// bookkeeping: about 10% over what was measured.
const redisAllocBudget = 35

const redisAllocMeasured = "32 measured under -race"

const clusterAllocBudget = 132

const clusterAllocMeasured = "120 measured under -race"
