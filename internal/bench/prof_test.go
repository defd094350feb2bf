package bench

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestProfCall(t *testing.T) {
	url := os.Getenv("BENCH_REDIS")
	if url == "" {
		t.Skip("BENCH_REDIS not set")
	}
	r, err := Run(context.Background(), Options{Mode: os.Getenv("BENCH_MODE"), RedisURL: url, Duration: 5 * time.Second, Sequential: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r)
}
