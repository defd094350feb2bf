package client_test

import (
	"testing"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
)

func TestSplitName(t *testing.T) {
	for name, want := range map[string][2]string{
		"math.add": {"math", "add"}, "users.profile.get": {"users", "profile.get"}, "math.add@v2": {"math", "add@v2"},
	} {
		s, f, err := client.SplitName(name)
		if err != nil || s != want[0] || f != want[1] {
			t.Errorf("SplitName(%q) = %q %q %v", name, s, f, err)
		}
	}
	for _, bad := range []string{"", "math", "math.", ".add", "Math.add", "a b.c"} {
		if _, _, err := client.SplitName(bad); err == nil {
			t.Errorf("SplitName(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := client.New(bus.NewMemory(), client.Config{Timeout: -1, MaxPayloadBytes: -5}); err == nil {
		t.Fatal("New accepted a negative timeout and payload limit")
	}
}
