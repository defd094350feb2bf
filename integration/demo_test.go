package integration

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh/internal/demo"
)

// `fnmesh demo --redis`: the README's main command, over Redis. Not
// parallel: the demo's services have fixed names.
func TestDemoOverRedis(t *testing.T) {
	var out bytes.Buffer
	if err := demo.Run(context.Background(), &out, redisURL); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range demo.Shows {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	t.Log("\n" + out.String())
}
