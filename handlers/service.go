package handlers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	rnd "math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/security"
)

// Config configures a Service. Zero values take the defaults written on
// each field.
type Config struct {
	// Auth verifies every caller's token. Required, unless
	// AllowUnauthenticated says the service runs open. Tokens it accepts
	// are remembered until they expire (security.CacheVerified), for
	// calls over the bus and in-process alike.
	Auth security.Verifier
	// AllowUnauthenticated runs every function without a token check. It
	// must be set explicitly: a service with neither Auth nor this fails
	// to Run.
	AllowUnauthenticated bool
	// Concurrency is the most requests one replica runs at once. Default 64.
	Concurrency int
	// ReplicaID names this replica in its consumer group and in replies.
	// Default: host-pid-random, new for every Run.
	ReplicaID string
	// MaxPayloadBytes rejects larger arguments with invalid_argument before
	// decoding them. Default 1 MiB.
	MaxPayloadBytes int
	// Retry is how Send requests that fail are retried. Calls are never
	// retried by the service: their caller gets the error.
	Retry RetryPolicy
	// DrainTimeout is how long Run, once its context ends, lets running
	// requests finish before cancelling their contexts; requests still
	// running then are handed back for another replica. Default 30s.
	DrainTimeout time.Duration
	// MaxDeliveries bounds how often one request is delivered (taken over
	// from replicas that died or stalled while running it, or handed back
	// after failing to record its outcome). Past it the request goes to
	// the dead-letter stream and its caller, if waiting, gets internal.
	// Default 5.
	MaxDeliveries int
	// MaxBacklog, when above 0, is published for callers: once that many
	// requests wait for a replica, Call and Send fail with
	// resource_exhausted instead of adding more. Default 0: no bound.
	MaxBacklog int64
	// IdempotencyWindow is how long an idempotency key is remembered after
	// its request finished. Default 24h.
	IdempotencyWindow time.Duration
	// Logger receives the service's logs. Default slog.Default().
	Logger *slog.Logger
	// Interceptors wrap every function's chain, the first outermost,
	// before the token check: for metrics, tracing and logging that must
	// see every outcome, refusals included.
	Interceptors []Middleware
	// OpsAddr, when set (e.g. ":9090"), serves /healthz there: 200 while
	// the replica serves, 503 while it starts or drains. Run it once per
	// process.
	OpsAddr string
	// OpsHandlers are served on OpsAddr next to /healthz, e.g.
	// "/metrics".
	OpsHandlers map[string]http.Handler
	// Policy, when set, decides per function who may call it (see
	// policy.go for the order of checks). It needs Auth: tokens that are
	// sent are verified, and a rule decides about callers without one.
	Policy *security.Policy
	// Plugins run beside every replica, e.g. queue metrics.
	Plugins []Plugin
	// Discovery configures how every replica announces itself in the
	// registry of its bus (its functions, their JSON Schemas, heartbeats),
	// so that fnmesh ls, describe and top show it and callers find it.
	// Replicas announce by default; a registry.Announcer in Plugins
	// replaces this one.
	Discovery registry.Config
	// NoDiscovery keeps replicas out of the registry. Callers that check
	// the registry (the default) then refuse calls of the service with
	// not_found: give them client.Config.SkipRegistryCheck.
	NoDiscovery bool
	// StatusTTL is how long a send's status record (queued, running, done,
	// dead_lettered: fnmesh status, the gateway's /v1/requests/{id})
	// outlives its last change. Redis holds at most send rate × StatusTTL
	// records. Default registry.DefaultStatusTTL (10m); negative records
	// nothing.
	StatusTTL time.Duration
}

// RetryPolicy says how often and how fast a failed Send request is run
// again before it goes to the dead-letter stream. Errors with codes
// invalid_argument, unauthenticated, permission_denied and not_found are
// not retried: another run would fail the same way.
type RetryPolicy struct {
	// MaxAttempts counts every run, the first included. Default 5; 1
	// means no retry.
	MaxAttempts int
	// InitialBackoff is the pause after the first failure. Default 100ms.
	InitialBackoff time.Duration
	// MaxBackoff caps the pause. Default 10s.
	MaxBackoff time.Duration
	// Multiplier grows the pause after each failure. Default 2.
	Multiplier float64
	// Jitter spreads each pause by up to this fraction either way, so
	// that retries of many requests do not land together. Default 0.2.
	Jitter float64
}

func (p *RetryPolicy) setDefaults() {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = 5
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = 100 * time.Millisecond
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = 10 * time.Second
	}
	if p.Multiplier == 0 {
		p.Multiplier = 2
	}
	if p.Jitter == 0 {
		p.Jitter = 0.2
	}
}

func (p RetryPolicy) validate() error {
	var errs []error
	if p.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("Retry.MaxAttempts is %d, want at least 1", p.MaxAttempts))
	}
	if p.InitialBackoff < 0 || p.MaxBackoff < 0 {
		errs = append(errs, errors.New("Retry backoffs must not be negative"))
	}
	if p.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("Retry.Multiplier is %v, want at least 1", p.Multiplier))
	}
	if p.Jitter < 0 || p.Jitter > 1 {
		errs = append(errs, fmt.Errorf("Retry.Jitter is %v, want 0 to 1", p.Jitter))
	}
	return errors.Join(errs...)
}

// Backoff returns the pause after the given failed attempt (1-based).
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	d := float64(p.InitialBackoff) * math.Pow(p.Multiplier, float64(attempt-1))
	if d > float64(p.MaxBackoff) {
		d = float64(p.MaxBackoff)
	}
	d *= 1 + p.Jitter*(2*rnd.Float64()-1)
	return time.Duration(d)
}

func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 64
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = 1 << 20
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = 5
	}
	if c.IdempotencyWindow == 0 {
		c.IdempotencyWindow = 24 * time.Hour
	}
	if c.StatusTTL == 0 {
		c.StatusTTL = registry.DefaultStatusTTL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Auth = security.CacheVerified(c.Auth, security.TokenCacheConfig{})
	c.Retry.setDefaults()
}

// Validate reports every problem with c (after defaults).
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Policy != nil && c.Auth == nil:
		errs = append(errs, errors.New("handlers: Config.Policy needs Auth to verify the tokens its rules read (an allow rule admits callers without a token)"))
	case c.Auth == nil && !c.AllowUnauthenticated:
		errs = append(errs, errors.New("handlers: Config.Auth is not set: give a token verifier, or set AllowUnauthenticated to run every function open"))
	case c.Auth != nil && c.AllowUnauthenticated:
		errs = append(errs, errors.New("handlers: Config.Auth and AllowUnauthenticated are both set: choose one"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("handlers: Config.Concurrency is %d, want at least 1", c.Concurrency))
	}
	if c.MaxPayloadBytes < 1 {
		errs = append(errs, fmt.Errorf("handlers: Config.MaxPayloadBytes is %d, want at least 1", c.MaxPayloadBytes))
	}
	if c.MaxDeliveries < 1 {
		errs = append(errs, fmt.Errorf("handlers: Config.MaxDeliveries is %d, want at least 1", c.MaxDeliveries))
	}
	if c.MaxBacklog < 0 {
		errs = append(errs, fmt.Errorf("handlers: Config.MaxBacklog is %d, want 0 (none) or more", c.MaxBacklog))
	}
	if c.IdempotencyWindow < 0 {
		errs = append(errs, fmt.Errorf("handlers: Config.IdempotencyWindow is %v, want more than 0", c.IdempotencyWindow))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("handlers: Config.DrainTimeout is %v, want 0 or more", c.DrainTimeout))
	}
	if err := c.Retry.validate(); err != nil {
		errs = append(errs, fmt.Errorf("handlers: Config.%w", err))
	}
	if err := validatePlugins(c.Plugins); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
var funcRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$`)

// Service is a named set of functions. Every Run of it is one replica.
type Service struct {
	name       string
	cfg        Config
	mu         sync.Mutex
	funcs      map[string]*function
	middleware []Middleware
	errs       []error
	built      bool  // chains assembled by the first Run
	buildErr   error // what that Run found wrong
	started    chan struct{}
	startOnce  sync.Once
	local      localReplicas // replicas in this process, for Dispatch
	colocated  []string      // services hosted with it (SetColocated)
}

// NewService returns an empty service. Configuration problems are
// reported by Run.
func NewService(name string, cfg Config) *Service {
	cfg.setDefaults()
	s := &Service{name: name, cfg: cfg, funcs: map[string]*function{}, started: make(chan struct{})}
	if !nameRE.MatchString(name) {
		s.errs = append(s.errs, fmt.Errorf("handlers: service name %q: want lower case letters, digits, '-' and '_', up to 63", name))
	}
	return s
}

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// Use adds middleware that runs for every function, after the token check
// and the function's claim requirements, before the idempotency key is
// looked up and before validation.
func (s *Service) Use(m ...Middleware) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.middleware = append(s.middleware, m...)
}

func (s *Service) add(f *function) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.built:
		s.errs = append(s.errs, fmt.Errorf("handlers: function %s.%s registered after Run started", s.name, f.name))
	case !funcRE.MatchString(f.name):
		s.errs = append(s.errs, fmt.Errorf("handlers: function name %q: want letters, digits, '_', '-', '.', '@'", f.name))
	case s.funcs[f.name] != nil:
		s.errs = append(s.errs, fmt.Errorf("handlers: function %s.%s registered twice", s.name, f.name))
	default:
		s.funcs[f.name] = f
	}
}

// Functions returns the names of the registered functions.
func (s *Service) Functions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.funcs))
	for n := range s.funcs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Started is closed once the first replica of s has joined its consumer
// group.
func (s *Service) Started() <-chan struct{} { return s.started }

// build validates everything and assembles each function's chain, once:
// replicas of one Service in one process share the chains.
func (s *Service) build() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.built {
		if s.buildErr != nil {
			return s.buildErr
		}
		return errors.Join(s.errs...) // functions registered too late
	}
	s.built = true
	s.buildErr = s.assemble()
	return s.buildErr
}

func (s *Service) assemble() error {
	errs := append([]error(nil), s.errs...)
	if err := s.cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(s.funcs) == 0 {
		errs = append(errs, fmt.Errorf("handlers: service %s has no functions", s.name))
	}
	errs = append(errs, s.checkPolicy()...)
	for _, f := range s.funcs {
		if f.retry != nil {
			f.retry.setDefaults()
			if err := f.retry.validate(); err != nil {
				errs = append(errs, fmt.Errorf("handlers: function %s.%s: %w", s.name, f.name, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.warnDenied()
	validate := NewValidator()
	for _, f := range s.funcs {
		call := f.call
		var h Handler = HandlerFunc(func(ctx context.Context, req *Request) (any, error) {
			arg, err := req.Arg()
			if err != nil {
				return nil, err
			}
			return call(ctx, arg)
		})
		h = Validation(validate)(h)
		h = idempotency(s.name)(h)
		for i := len(s.middleware) - 1; i >= 0; i-- {
			h = s.middleware[i](h)
		}
		h = requireClaims(h)
		switch {
		case s.cfg.Policy != nil:
			rule, _ := s.ruleFor(f)
			h = policyCheck(s.name, rule)(h)
			h = optionalToken(s.cfg.Auth)(h)
		case s.cfg.Auth != nil:
			h = TokenCheck(s.cfg.Auth)(h)
		}
		for i := len(s.cfg.Interceptors) - 1; i >= 0; i-- {
			h = s.cfg.Interceptors[i](h)
		}
		f.handler = h
	}
	return nil
}

// Run runs one replica of s on b until ctx ends, then stops taking
// requests, lets running ones finish for up to DrainTimeout, and returns.
// Call Run again (in this or another process) for more replicas.
func (s *Service) Run(ctx context.Context, b bus.Bus) error {
	if err := s.build(); err != nil {
		return err
	}
	id := s.cfg.ReplicaID
	if id == "" {
		id = newReplicaID()
	}
	sub, err := b.GroupSubscriber(bus.GroupConfig{Consumer: id, Concurrency: s.cfg.Concurrency, SettleDirect: true, MaxFieldBytes: s.cfg.MaxPayloadBytes})
	if err != nil {
		return err
	}
	rep := &replica{svc: s, id: id, bus: b, pub: b.Publisher(), idem: b.Idempotency(), log: s.cfg.Logger.With("service", s.name, "replica", id)}
	rep.status = newStatusRecorder(s, b, id, rep.log)
	defer rep.status.flush() // last: after the drain's records
	if err := b.SetLimits(ctx, s.name, bus.Limits{MaxBacklog: s.cfg.MaxBacklog}); err != nil {
		return fmt.Errorf("handlers: service %s: publish limits: %w", s.name, err)
	}
	// Handlers run on a context that outlives ctx by the drain timeout.
	hardCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	rep.hardCtx = hardCtx

	var health *healthState
	if s.cfg.OpsAddr != "" {
		stopOps, h, err := s.serveOps()
		if err != nil {
			return err
		}
		defer stopOps()
		health = h
	}
	// One subscription per request stream: the service's, and one per
	// versioned function (bus.FunctionTopic).
	var streams []<-chan *bus.DeliveredRequest
	for _, topic := range s.topics() {
		reqs, err := subscribeRequests(hardCtx, sub, topic)
		if err != nil {
			sub.Close()
			return fmt.Errorf("handlers: service %s: %w", s.name, err)
		}
		streams = append(streams, reqs)
	}
	// A fixed pool of workers, one per request in flight. watermill's
	// Router starts a goroutine per message instead, and each new goroutine
	// grows its stack again while decoding arguments: measured, the Router
	// gave 22.5k calls/s at 56.8us of CPU per call, the pool 24.5k at
	// 50.5us (medians of six alternating runs, README Performance).
	var workers sync.WaitGroup
	for i := 0; i < s.cfg.Concurrency*len(streams); i++ {
		workers.Add(1)
		reqs := streams[i%len(streams)]
		go func() {
			defer workers.Done()
			for dr := range reqs {
				if err := rep.track(dr); err != nil {
					dr.Nack()
				} else {
					dr.Ack()
				}
			}
		}()
	}
	ended := make(chan struct{}) // every worker returned: the subscription ended
	go func() { workers.Wait(); close(ended) }()
	stopPlugins, err := s.startPlugins(ctx, ReplicaInfo{Service: s.name, Replica: id, Bus: b, Functions: s.FunctionInfos(), Logger: rep.log, Colocated: s.colocatedWith()})
	if err != nil {
		sub.Close()
		hardStop()
		waitTimeout(&workers, 5*time.Second)
		return err
	}
	defer stopPlugins() // also when the bus closed
	local := rep.startLocal()
	s.startOnce.Do(func() { close(s.started) })
	health.set(true)
	rep.log.Debug("replica started")

	select {
	case <-ctx.Done():
	case <-ended:
		local.close()
		hardStop()
		local.wait(5 * time.Second)
		return fmt.Errorf("handlers: service %s: bus closed", s.name)
	}
	start := time.Now()
	health.set(false)
	stopPlugins() // e.g. leave the registry before draining
	// Stop taking requests (in-process ones go to the bus); let running
	// ones finish for DrainTimeout.
	local.close()
	sub.Close()
	drained := waitTimeout(&workers, s.cfg.DrainTimeout)
	drained = local.wait(max(0, s.cfg.DrainTimeout-time.Since(start))) && drained
	// Then cancel what still runs: those requests are handed back (nacked,
	// and the bus gives them to another replica at once).
	unfinished := rep.running.Load() + local.inflight.Load()
	hardStop()
	if !drained && !(waitTimeout(&workers, 5*time.Second) && local.wait(5*time.Second)) {
		rep.log.Warn("requests ignore their cancelled context; they will be taken over once idle", "count", rep.running.Load())
	}
	rep.log.Debug("replica stopped", "drain", time.Since(start), "handed_back", unfinished)
	return nil
}

// subscribeRequests subscribes sub to topic's requests: decoded straight
// from their entries when sub is one of the bus package's
// (bus.RequestSubscriber); else from the messages of any watermill
// subscriber that settles directly (bus.GroupConfig.SettleDirect).
func subscribeRequests(ctx context.Context, sub message.Subscriber, topic string) (<-chan *bus.DeliveredRequest, error) {
	if rs, ok := sub.(bus.RequestSubscriber); ok {
		return rs.SubscribeRequests(ctx, topic)
	}
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	reqs := make(chan *bus.DeliveredRequest)
	go func() {
		defer close(reqs)
		for m := range msgs {
			reqs <- bus.FromMessage(m)
		}
	}()
	return reqs, nil
}

// topics lists the request streams the replica reads: the service's,
// and one per versioned function (bus.FunctionTopic).
func (s *Service) topics() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := map[string]bool{}
	for name := range s.funcs {
		set[bus.FunctionTopic(s.name, name)] = true
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func newReplicaID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "replica"
	}
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
