package client_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
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

// Close ends the calls still waiting for a reply with unavailable, at
// once; calls after Close fail the same way.
func TestCloseEndsWaitingCalls(t *testing.T) {
	ctx := context.Background()
	b := bus.NewMemory()
	defer b.Close()
	running, release := make(chan struct{}), make(chan struct{})
	svc := handlers.NewService("closing", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "wait", func(context.Context, struct{}) (int, error) {
		running <- struct{}{}
		<-release
		return 1, nil
	})
	handlers.Register(svc, "id", func(_ context.Context, n int) (int, error) { return n, nil })
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- svc.Run(runCtx, b) }()
	defer func() { close(release); stop(); <-ran }()
	<-svc.Started()

	c, err := client.New(b, client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Calls reuse the waiters of calls before them: each gets its own
	// result.
	for i := 0; i < 50; i++ {
		var n int
		if err := c.Call(ctx, "closing.id", i, &n, client.WithTimeout(time.Second)); err != nil || n != i {
			t.Fatalf("call %d: %d, %v", i, n, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Call(ctx, "closing.wait", struct{}{}, nil, client.WithTimeout(time.Minute)) }()
	<-running
	c.Close()
	select {
	case err := <-done:
		if fnmesh.CodeOf(err) != fnmesh.CodeUnavailable {
			t.Fatalf("waiting call ended with %v, want unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting call did not end when its client closed")
	}
	if err := c.Call(ctx, "closing.id", 1, nil); fnmesh.CodeOf(err) != fnmesh.CodeUnavailable {
		t.Fatalf("call after Close: %v, want unavailable", err)
	}
}
