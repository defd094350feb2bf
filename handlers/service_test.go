package handlers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
)

func TestRunReportsEveryConfigProblem(t *testing.T) {
	svc := handlers.NewService("Bad Name", handlers.Config{Concurrency: -1, Retry: handlers.RetryPolicy{Jitter: 3}})
	handlers.Register(svc, "add", func(context.Context, struct{}) (int, error) { return 0, nil })
	handlers.Register(svc, "add", func(context.Context, struct{}) (int, error) { return 0, nil })
	handlers.Register(svc, "bad name!", func(context.Context, struct{}) (int, error) { return 0, nil })
	err := svc.Run(context.Background(), bus.NewMemory())
	if err == nil {
		t.Fatal("Run accepted a broken service")
	}
	for _, want := range []string{"service name", "Auth is not set", "Concurrency", "Jitter", "registered twice", "bad name!"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestRunNeedsFunctions(t *testing.T) {
	svc := handlers.NewService("empty", handlers.Config{AllowUnauthenticated: true})
	if err := svc.Run(context.Background(), bus.NewMemory()); err == nil || !strings.Contains(err.Error(), "no functions") {
		t.Fatalf("Run: %v", err)
	}
}

func TestBackoffGrowsAndIsCapped(t *testing.T) {
	p := handlers.RetryPolicy{MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	for attempt, base := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 8: time.Second} {
		for i := 0; i < 50; i++ {
			d := p.Backoff(attempt)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("attempt %d: backoff %v outside %v±20%%", attempt, d, base)
			}
		}
	}
}

func TestFunctionsAreListed(t *testing.T) {
	svc := handlers.NewService("m", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "b", func(context.Context, struct{}) (int, error) { return 0, nil })
	handlers.Register(svc, "a", func(context.Context, struct{}) (int, error) { return 0, nil })
	if got := strings.Join(svc.Functions(), ","); got != "a,b" {
		t.Fatalf("Functions() = %s", got)
	}
}
