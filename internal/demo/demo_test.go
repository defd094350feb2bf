package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh/internal/demo"
)

// The demo shows what it says it shows. The same check runs over Redis in
// integration/demo_test.go.
func TestDemoInMemory(t *testing.T) {
	checkDemo(t, "")
}

func checkDemo(t *testing.T, redisURL string) {
	var out bytes.Buffer
	if err := demo.Run(context.Background(), &out, redisURL); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)
	for _, want := range demo.Shows {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}
