package bus_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/bus/bustest"
)

func TestMemoryBehaviour(t *testing.T) {
	bustest.Run(t, func(t *testing.T) bus.Bus { return bus.NewMemory() })
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
