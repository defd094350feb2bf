package meshtest

import "testing"

// AllocsPerCall is the average number of allocations of call, run 2000
// times after 200 runs that warm pools and buffers up. The allocation
// budget tests of each path measure with it.
func AllocsPerCall(call func()) float64 {
	for i := 0; i < 200; i++ {
		call()
	}
	return testing.AllocsPerRun(2000, call)
}
