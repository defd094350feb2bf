package netdelay

import (
	"slices"
	"sync"
	"syscall"
	"time"
)

// sleepUntil waits until due with the kernel's timer precision: the Go
// runtime's timers can fire a millisecond late when its threads are idle,
// which turned a 0.25 ms delay into 1.1 ms. The kernel's sleeps overshoot
// too, by a steady slack (about 0.1 ms on a virtual machine), measured
// once and taken off; but it never returns before due, also when the
// slack was measured on a busier machine than the one it runs on now.
// It blocks the thread, not only the goroutine; the proxy has a few.
func sleepUntil(due time.Time) {
	for {
		wait := time.Until(due)
		if wait <= 0 {
			return
		}
		if d := wait - overshoot(); d > 0 {
			nanosleep(d)
		} else {
			nanosleep(wait)
		}
	}
}

func nanosleep(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	for {
		var left syscall.Timespec
		if err := syscall.Nanosleep(&ts, &left); err != syscall.EINTR {
			return
		}
		ts = left
	}
}

// overshoot is the median time a short nanosleep takes beyond what it
// asks for.
var overshoot = sync.OnceValue(func() time.Duration {
	const ask = 200 * time.Microsecond
	over := make([]time.Duration, 21)
	for i := range over {
		t := time.Now()
		nanosleep(ask)
		over[i] = time.Since(t) - ask
	}
	slices.Sort(over)
	return max(over[len(over)/2], 0)
})
