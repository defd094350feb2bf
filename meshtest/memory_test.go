package meshtest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/meshtest"
)

func TestMemoryBehaviour(t *testing.T) {
	meshtest.Run(t, func(t *testing.T) bus.Bus { return bus.NewMemory() })
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The same suite with every service co-located with its callers: calls
// run in-process, sends go over the in-memory bus.
func TestMemoryColocatedBehaviour(t *testing.T) {
	meshtest.RunColocated(t, func(t *testing.T) bus.Bus { return bus.NewMemory() }, false)
}

// And with sends in-process too (client.Config.LocalSends).
func TestMemoryColocatedSendsBehaviour(t *testing.T) {
	meshtest.RunColocated(t, func(t *testing.T) bus.Bus { return bus.NewMemory() }, true)
}

// And with every call run on its caller's goroutine (handlers.Inline).
func TestMemoryColocatedInlineBehaviour(t *testing.T) {
	meshtest.RunColocatedInline(t, func(t *testing.T) bus.Bus { return bus.NewMemory() })
}
