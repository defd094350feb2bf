package integration

import (
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry/registrytest"
)

// The registry's behaviour suite of the in-memory bus, on Redis.
func TestRedisRegistry(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) bus.Bus { return newRedisBus(t, bus.RedisConfig{}) })
}
