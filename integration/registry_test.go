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

// The registry's suite on a Redis Cluster: the heartbeat script touches
// only the service's slot, the services index is a pipeline of its own.
func TestClusterRegistry(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	registrytest.Run(t, func(t *testing.T) bus.Bus { return busAt(t, c.URL, bus.RedisConfig{}) })
}
