package registry_test

import (
	"io"
	"log/slog"
	"testing"

	"go.uber.org/goleak"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry/registrytest"
)

func TestMemoryRegistry(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) bus.Bus { return bus.NewMemory() })
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
