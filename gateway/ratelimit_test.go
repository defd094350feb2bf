package gateway

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// Buckets of idle callers are swept: the map holds recent callers only.
func TestLimitersForgetIdleCallers(t *testing.T) {
	l := newLimiters(100, 1)
	now := time.Now()
	for i := 0; i < 5000; i++ {
		if ok, _ := l.allow(fmt.Sprint("ip:", i), now); !ok {
			t.Fatalf("first request of caller %d refused", i)
		}
		now = now.Add(time.Millisecond)
	}
	if n := l.size(); n > 2*minSweep {
		t.Fatalf("%d buckets kept for 5000 one-off callers, want at most %d", n, 2*minSweep)
	}
	if ok, wait := l.allow("ip:4999", now); ok || wait <= 0 {
		t.Fatalf("a caller over its burst was allowed (wait %v)", wait)
	}
}

func TestClientIP(t *testing.T) {
	r, _ := http.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.1:5555"
	r.Header.Add("X-Forwarded-For", "1.1.1.1, 2.2.2.2")
	if ip := clientIP(r, false); ip != "10.0.0.1" {
		t.Errorf("untrusted header: %s", ip)
	}
	if ip := clientIP(r, true); ip != "2.2.2.2" {
		t.Errorf("trusted header: %s, want the last entry", ip)
	}
}
