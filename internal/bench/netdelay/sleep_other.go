//go:build !linux

package netdelay

import "time"

func sleep(d time.Duration) { time.Sleep(d) }
