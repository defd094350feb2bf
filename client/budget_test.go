//go:build !race

package client_test

// memoryAllocBudget is TestAllocationBudgetMemory's bound. It was 56
// before calls waited on a pooled timer and replicas settled requests
// directly, 51 before a call's contexts and request were merged, 44
// before pooled JSON decoders and waiters, 33 before replicas took
// requests decoded straight from the queue, without a watermill message,
// 20 before an entry id was one allocation.
const memoryAllocBudget = 18

const memoryAllocMeasured = "16 measured"
