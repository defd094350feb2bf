package netdelay

import (
	"testing"
	"time"
)

// A slack measured while the machine was busier than it is now must not
// shorten a delay: sleepUntil never returns before its due time.
func TestSleepUntilNeverReturnsEarly(t *testing.T) {
	measured := overshoot
	defer func() { overshoot = measured }()
	overshoot = func() time.Duration { return 5 * time.Millisecond }
	for i := 0; i < 20; i++ {
		due := time.Now().Add(300 * time.Microsecond)
		sleepUntil(due)
		if early := time.Until(due); early > 0 {
			t.Fatalf("returned %v before its due time", early)
		}
	}
}
