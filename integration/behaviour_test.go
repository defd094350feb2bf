package integration

import (
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/meshtest"
)

func newRedisBus(t testing.TB, cfg bus.RedisConfig) *bus.Redis {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = redisURL
	}
	b, err := bus.NewRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The behaviour suite of the in-memory bus, on Redis.
func TestRedisBehaviour(t *testing.T) {
	meshtest.Run(t, func(t *testing.T) bus.Bus { return newRedisBus(t, bus.RedisConfig{}) })
}

// The suite on the co-located path with a Redis bus: every service a test
// starts is hosted in the test's process and called in-process; sends go
// through Redis, as they do by default.
func TestRedisColocatedBehaviour(t *testing.T) {
	meshtest.RunColocated(t, func(t *testing.T) bus.Bus { return newRedisBus(t, bus.RedisConfig{}) }, false)
}

// And with every co-located call run on its caller's goroutine
// (handlers.Inline).
func TestRedisColocatedInlineBehaviour(t *testing.T) {
	meshtest.RunColocatedInline(t, func(t *testing.T) bus.Bus { return newRedisBus(t, bus.RedisConfig{}) })
}

// busConfig is the bus configuration tests use unless they need another.
func busConfig() bus.RedisConfig { return bus.RedisConfig{} }
