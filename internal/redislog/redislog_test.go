package redislog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// With Redis down, go-redis's dial failures reach the slog logger at
// debug level (hidden at info), not the standard logger.
func TestRouteSendsGoRedisLinesToSlogAtDebug(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var buf bytes.Buffer
		Route(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})))
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
		err := rdb.Ping(context.Background()).Err()
		rdb.Close()
		if err == nil {
			t.Fatal("ping of a closed port succeeded")
		}
		got := buf.String()
		if level == slog.LevelInfo && got != "" {
			t.Errorf("at info level: %q", got)
		}
		if level == slog.LevelDebug && (!strings.Contains(got, "level=DEBUG") || !strings.Contains(got, "component=go-redis")) {
			t.Errorf("at debug level: %q", got)
		}
	}
}
