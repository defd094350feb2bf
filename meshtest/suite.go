// Package meshtest is the behaviour suite every fnmesh transport passes:
// the same calls, sends, errors, middleware and breakers, on the
// in-memory bus and on Redis, directly and co-located. It drives the whole
// mesh (client, handlers, bus), so it sits above the packages it tests;
// its Harness starts services and clients for other packages' tests too.
//
//	func TestMemory(t *testing.T) {
//		meshtest.Run(t, func(t *testing.T) bus.Bus { return bus.NewMemory() })
//	}
package meshtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// NewBus returns a fresh bus for one test; the suite closes it.
type NewBus func(t *testing.T) bus.Bus

// Run runs every behaviour test against buses from newBus.
func Run(t *testing.T, newBus NewBus) { run(t, newBus, nil) }

// RunColocated runs every behaviour test on the co-located path: each
// service a test starts is hosted in the test's process, and its clients
// call it in-process (client.Config.Local), with the same expectations as
// over the bus. Sends go over the bus unless localSends (client.Config
// LocalSends).
func RunColocated(t *testing.T, newBus NewBus, localSends bool) {
	run(t, newBus, &Colocated{LocalSends: localSends})
}

// RunColocatedInline runs every behaviour test on the co-located path
// with every call run on its caller's goroutine (handlers.Inline,
// Service.DispatchInline): the same expectations, except where a test's
// function ignores its context, which holds an inline caller until it
// returns.
func RunColocatedInline(t *testing.T, newBus NewBus) {
	run(t, newBus, &Colocated{AllInline: true})
}

func run(t *testing.T, newBus NewBus, colocated *Colocated) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *Harness)
	}{
		{"CallReturnsResult", testCallReturnsResult},
		{"CallsSpreadOverReplicas", testCallsSpreadOverReplicas},
		{"ReplicaRunsManyAtOnce", testReplicaRunsManyAtOnce},
		{"DeadlineTravelsWithRequest", testDeadlineTravels},
		{"TimeoutWithNoReplica", testTimeoutWithNoReplica},
		{"ContextEndedBeforeFirstLook", testContextEndedBeforeFirstLook},
		{"ExpiredRequestIsNotRun", testExpiredRequestIsNotRun},
		{"CanceledContext", testCanceledContext},
		{"CallsAreNotRetried", testCallsAreNotRetried},
		{"SendsRunOnce", testSendsRunOnce},
		{"NewReplicaDoesNotReplay", testNewReplicaDoesNotReplay},
		{"SendRetriesWithBackoff", testSendRetries},
		{"FailingSendIsDeadLettered", testFailingSendIsDeadLettered},
		{"ApplicationErrorCrossesTheWire", testApplicationError},
		{"UnknownFunctionIsNotFound", testUnknownFunction},
		{"PanicBecomesInternal", testPanicBecomesInternal},
		{"ValidationNamesFields", testValidation},
		{"MalformedArguments", testMalformedArguments},
		{"OversizedArguments", testOversizedArguments},
		{"MalformedMessageIsDeadLettered", testMalformedMessage},
		{"TokenCheck", testTokenCheck},
		{"RequireRole", testRequireRole},
		{"PublicFunction", testPublicFunction},
		{"ServiceWithoutAuthDoesNotRun", testServiceWithoutAuth},
		{"PolicyDecidesPerFunction", testPolicy},
		{"PolicyConfigErrors", testPolicyConfigErrors},
		{"PolicyReadsArgsAsTheFunction", testPolicyReadsArgsAsTheFunction},
		{"ServiceIdentityAtTheCallSite", testServiceIdentity},
		{"BreakerOpensAndRecovers", testBreakerOpensAndRecovers},
		{"BreakerIgnoresCallerErrors", testBreakerIgnoresCallerErrors},
		{"BreakerCountsFailuresInARow", testBreakerCountsFailuresInARow},
		{"BreakerIgnoresShortTimeouts", testBreakerIgnoresShortTimeouts},
		{"GracefulStopFinishesRunningCalls", testGracefulStop},
		{"ClosedClientFailsWaitingCalls", testClosedClient},
		{"IdempotentSendsRunOnce", testIdempotentSends},
		{"IdempotentCallReturnsFirstResult", testIdempotentCallReturnsFirstResult},
		{"FailedIdempotentSendMayRunAgain", testFailedIdempotentSendMayRunAgain},
		{"IdempotencyKeyNeedsAuthorization", testIdemKeyNeedsAuthorization},
		{"IdempotencyKeyScopedToFunction", testIdemKeyScopedToFunction},
		{"IdempotencyKeyWithOtherArguments", testIdemKeyWithOtherArguments},
		{"IdempotencyKeySharedAcrossPaths", testIdemKeySharedAcrossPaths},
		{"BacklogBoundRefusesAndLosesNothing", testBacklogBound},
		{"DeadLetterReplayAndPurge", testDeadLetterReplayAndPurge},
		{"StopHandsBackUnfinished", testStopHandsBackUnfinished},
		{"GroupSubscriberSettles", testGroupSubscriberSettles},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := NewHarness(t, newBus(t))
			if colocated != nil {
				h.Local = &Colocated{LocalSends: colocated.LocalSends, AllInline: colocated.AllInline}
			}
			tc.fn(t, h)
		})
	}
}

// Harness starts services and clients on one bus and stops them when the
// test ends.
type Harness struct {
	T   testing.TB
	Bus bus.Bus
	// Local, when set, hosts every service Start runs in this process, and
	// Client's clients call them in-process.
	Local *Colocated
}

// Colocated is the set of services a Harness hosts in-process.
type Colocated struct {
	LocalSends bool // clients also send in-process
	AllInline  bool // every call runs on its caller's goroutine (DispatchInline)
	mu         sync.Mutex
	services   map[string]*handlers.Service
}

func (c *Colocated) add(svc *handlers.Service) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.services == nil {
		c.services = map[string]*handlers.Service{}
	}
	c.services[svc.Name()] = svc
}

func (c *Colocated) get(service string) *handlers.Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.services[service]
}

// Hosts implements client.LocalServices.
func (c *Colocated) Hosts(service string) bool { return c.get(service) != nil }

// Dispatch implements client.LocalServices.
func (c *Colocated) Dispatch(ctx context.Context, service string, req *bus.Request, deliver func(*bus.Reply)) error {
	svc := c.get(service)
	if svc == nil {
		return handlers.ErrNotServedHere
	}
	if c.AllInline {
		return svc.DispatchInline(ctx, req, deliver)
	}
	return svc.Dispatch(ctx, req, deliver)
}

// Inline tells the client which calls Dispatch answers before it
// returns: all of them with AllInline set, else those of functions
// registered with handlers.Inline.
func (c *Colocated) Inline(service, function string) bool {
	svc := c.get(service)
	return svc != nil && (c.AllInline || svc.Inline(function))
}

// NewHarness wraps b; b is closed when the test ends.
func NewHarness(t testing.TB, b bus.Bus) *Harness {
	t.Cleanup(func() { b.Close() })
	return &Harness{T: t, Bus: b}
}

// Name returns a service name unique to this run.
func Name(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes, for capturing
// a logger's output while services run.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Quiet is a logger that drops everything, for services whose failures
// are the point of a test.
var Quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Start runs one replica of svc until the test ends and waits until it
// has joined its group. Run's error is checked at the end.
func (h *Harness) Start(svc *handlers.Service) {
	h.T.Helper()
	if h.Local != nil {
		h.Local.add(svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx, h.Bus) }()
	h.T.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			h.T.Errorf("service %s: Run: %v", svc.Name(), err)
		}
	})
	select {
	case <-svc.Started():
	case err := <-errc:
		errc <- nil // Run has returned: the cleanup must not wait for it again
		h.T.Fatalf("service %s did not start: %v", svc.Name(), err)
	case <-time.After(10 * time.Second):
		h.T.Fatalf("service %s did not start in 10s", svc.Name())
	}
}

// StartStoppable runs one replica, waits until it has joined its group
// (or Run failed), and returns a function that stops it and returns
// Run's error.
func (h *Harness) StartStoppable(svc *handlers.Service) (stop func() error) {
	if h.Local != nil {
		h.Local.add(svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx, h.Bus) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	h.T.Cleanup(func() { stop() })
	select {
	case <-svc.Started():
	case err = <-errc:
		once.Do(func() { cancel() })
	case <-time.After(10 * time.Second):
		h.T.Fatalf("service %s did not start in 10s", svc.Name())
	}
	return stop
}

// Client returns a client on the harness's bus.
func (h *Harness) Client(cfg client.Config) *client.Client {
	h.T.Helper()
	if cfg.Logger == nil {
		cfg.Logger = Quiet
	}
	if h.Local != nil && cfg.Local == nil {
		cfg.Local, cfg.LocalSends = h.Local, h.Local.LocalSends
	}
	c, err := client.New(h.Bus, cfg)
	if err != nil {
		h.T.Fatalf("client.New: %v", err)
	}
	h.T.Cleanup(func() { c.Close() })
	return c
}

// Eventually polls cond until it holds or d passes. For outcomes that
// have no signal of their own to wait on (a record appearing in Redis).
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SubscribeOneSlot subscribes consumer "c1" to service's request stream
// with one message in flight (Concurrency 1), settling directly or not;
// the subscriber closes with the test.
func SubscribeOneSlot(ctx context.Context, t testing.TB, b bus.Bus, service string, direct bool) <-chan *message.Message {
	t.Helper()
	sub, err := b.GroupSubscriber(bus.GroupConfig{Consumer: "c1", Concurrency: 1, SettleDirect: direct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	msgs, err := sub.Subscribe(ctx, bus.RequestTopic(service))
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// NextDelivery returns the next message of a group subscription and its
// delivery, failing the test if none comes before ctx ends.
func NextDelivery(ctx context.Context, t testing.TB, msgs <-chan *message.Message) (*message.Message, bus.Delivery) {
	t.Helper()
	select {
	case m := <-msgs:
		return m, bus.DeliveryFromContext(m.Context())
	case <-ctx.Done():
		t.Fatal("no message delivered")
		return nil, bus.Delivery{}
	}
}

// WantCode fails the test unless err is a *fnmesh.Error with code.
func WantCode(t testing.TB, err error, code fnmesh.Code) *fnmesh.Error {
	t.Helper()
	var fe *fnmesh.Error
	if !errors.As(err, &fe) {
		t.Fatalf("got error %v (%T), want a *fnmesh.Error with code %s", err, err, code)
	}
	if fe.Code != code {
		t.Fatalf("got code %s (%v), want %s", fe.Code, err, code)
	}
	return fe
}

// AddIn and AddOut are the arguments and result of the suite's math.add.
type AddIn struct {
	A int `json:"a" validate:"gte=0"`
	B int `json:"b" validate:"gte=0"`
}
type AddOut struct {
	Sum int `json:"sum"`
}

func add(_ context.Context, in AddIn) (AddOut, error) { return AddOut{Sum: in.A + in.B}, nil }

// openService returns a service that runs without a token check.
func openService(name string, opts ...func(*handlers.Config)) *handlers.Service {
	cfg := handlers.Config{AllowUnauthenticated: true, Logger: Quiet}
	for _, o := range opts {
		o(&cfg)
	}
	return handlers.NewService(name, cfg)
}

func fn(service, function string) string { return fmt.Sprintf("%s.%s", service, function) }
