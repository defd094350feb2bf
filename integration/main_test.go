// Package integration tests fnmesh against a real redis-server (started
// on a free port by internal/redistest, or $REDIS_URL) and real processes.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

var redisURL string

func TestMain(m *testing.M) {
	runWorkerIfAsked()
	runExampleIfAsked()
	url, err := redistest.URL()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	redisURL = url
	code := m.Run()
	redistest.Cleanup()
	os.Exit(code)
}
