//go:build !race

package integration

// redisAllocBudget is TestAllocationBudgetRedis's bound: client and
// replica together, about 2.6 kB per call (BenchmarkCallRedis). It was
// 175 before raw stream reads and callback replies, 110 before the bus
// wrote and read RESP itself on connections of its own (internal/wire: 73, then
// 45 with the readers), 41 before pooled JSON decoders (internal/jsondec:
// 33), pooled waiters, entries read in place, requests kept in the
// Invocation (27), replies that settle their requests without a closure
// (25), and 27 before replicas took requests decoded straight from their
// stream entries, without a watermill message (21), and an inbox that
// boxed the id of each entry it read.
const redisAllocBudget = 22

const redisAllocMeasured = "20 measured"

const clusterAllocBudget = 110

const clusterAllocMeasured = "100 measured"
