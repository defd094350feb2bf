package handlers_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
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

func TestOpsServerReportsHealth(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	entered, release := make(chan struct{}), make(chan struct{})
	svc := handlers.NewService("ops", handlers.Config{
		AllowUnauthenticated: true, OpsAddr: addr,
		OpsHandlers: map[string]http.Handler{"/extra": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("extra")) })},
	})
	handlers.Register(svc, "wait", func(context.Context, struct{}) (int, error) {
		close(entered)
		<-release
		return 0, nil
	})
	b := bus.NewMemory()
	defer b.Close()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, b) }()
	<-svc.Started()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get(handlers.HealthPath); code != 200 {
		t.Fatalf("/healthz while serving: %d", code)
	}
	if _, body := get("/extra"); body != "extra" {
		t.Fatalf("/extra: %q", body)
	}
	c, _ := client.New(b, client.Config{})
	defer c.Close()
	go c.Call(context.Background(), "ops.wait", struct{}{}, nil)
	<-entered
	stop() // draining: the call still runs
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _ := get(handlers.HealthPath)
		if code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz while draining: %d, want 503", code)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code, _ := get(handlers.HealthPath); code != 0 {
		t.Fatalf("ops server still answers after Run returned: %d", code)
	}
}

// watermillOnlyBus hands out group subscribers that are plain watermill
// Subscribers, as a Bus from elsewhere might: no bus.RequestSubscriber.
type watermillOnlyBus struct{ bus.Bus }

type plainSubscriber struct{ message.Subscriber }

func (b watermillOnlyBus) GroupSubscriber(cfg bus.GroupConfig) (message.Subscriber, error) {
	sub, err := b.Bus.GroupSubscriber(cfg)
	return plainSubscriber{sub}, err
}

// A replica on a bus whose subscribers deliver only watermill messages
// takes its requests from them: calls are answered, errors cross, and a
// malformed message is dead-lettered.
func TestReplicaOnWatermillSubscriber(t *testing.T) {
	var b bus.Bus = watermillOnlyBus{bus.NewMemory()}
	defer b.Close()
	if sub, _ := b.GroupSubscriber(bus.GroupConfig{Consumer: "x"}); sub != nil {
		if _, ok := sub.(bus.RequestSubscriber); ok {
			t.Fatal("the wrapped subscriber still delivers requests without messages")
		}
		sub.Close()
	}
	svc := handlers.NewService("plain", handlers.Config{AllowUnauthenticated: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	handlers.Register(svc, "add", func(_ context.Context, in struct{ A, B int }) (int, error) { return in.A + in.B, nil })
	handlers.Register(svc, "fail", func(context.Context, struct{}) (int, error) {
		return 0, fnmesh.NewError(fnmesh.CodePermissionDenied, "no")
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, b) }()
	defer func() { stop(); <-done }()
	<-svc.Started()
	c, err := client.New(b, client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sum int
	if err := c.Call(ctx, "plain.add", struct{ A, B int }{1, 2}, &sum); err != nil || sum != 3 {
		t.Fatalf("call: %v, sum %d", err, sum)
	}
	if err := c.Call(ctx, "plain.fail", struct{}{}, nil); fnmesh.CodeOf(err) != fnmesh.CodePermissionDenied {
		t.Fatalf("call of fail: %v, want permission_denied", err)
	}
	bad := message.NewMessage("bad", nil)
	bad.Metadata.Set(bus.FieldFunction, "add") // no id
	if err := b.Publisher().Publish(bus.RequestTopic("plain"), bad); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dls, err := b.DeadLetters(ctx, "plain", 10)
		if err == nil && len(dls) == 1 {
			if dls[0].Code != fnmesh.CodeInvalidArgument {
				t.Fatalf("dead letter %s: %s", dls[0].Code, dls[0].Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("malformed message not dead-lettered: %v %v", dls, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
