package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// Both transports answer calls, with every figure the comparison
// prints: the sum checked on each call, throughput, latency, CPU and
// allocations.
func TestRunTransport(t *testing.T) {
	url := os.Getenv("REDIS_URL")
	if url == "" {
		srv, err := redistest.Start(redistest.Options{})
		if err != nil {
			t.Fatalf("no Redis to test against (install redis-server or set REDIS_URL): %v", err)
		}
		t.Cleanup(srv.Kill)
		url = srv.URL
	}
	for _, mode := range []string{"bus-call", "rueidis-call", "rueidis-flush-call"} {
		r, err := RunTransport(context.Background(), Options{Mode: mode, Duration: 300 * time.Millisecond, Sequential: 20, RedisURL: url})
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if r.Calls == 0 || r.P50 <= 0 || r.CPUPerCall <= 0 || r.AllocsPerCall <= 0 {
			t.Fatalf("%s: %+v, want calls, p50, CPU and allocations per call", mode, r)
		}
	}
	if _, err := RunTransport(context.Background(), Options{Mode: "nope", RedisURL: url}); err == nil {
		t.Fatal("an unknown mode ran")
	}
}
