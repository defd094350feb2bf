package client_test

import (
	"regexp"
	"strings"
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

// SplitName accepts exactly the service names of the protocol's pattern.
func TestSplitNameMatchesServicePattern(t *testing.T) {
	pattern := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	alphabet := []string{"a", "z", "0", "9", "_", "-", "A", "Z", ".", " ", "é", "/"}
	names := []string{strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 62)}
	for _, x := range alphabet {
		for _, y := range alphabet {
			names = append(names, x, x+y, y+x+y, "m"+x+y)
		}
	}
	for _, svc := range names {
		_, _, err := client.SplitName(svc + ".f")
		before, _, _ := strings.Cut(svc, ".") // the name splits at its first dot
		if want := pattern.MatchString(before); (err == nil) != want {
			t.Errorf("service %q: SplitName error %v, want accepted=%v", svc, err, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := client.New(bus.NewMemory(), client.Config{Timeout: -1, MaxPayloadBytes: -5}); err == nil {
		t.Fatal("New accepted a negative timeout and payload limit")
	}
}
