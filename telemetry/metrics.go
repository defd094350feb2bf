package telemetry

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sony/gobreaker/v2"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/registry"
)

// MetricsConfig configures NewMetrics. Zero values take the defaults
// written on each field.
type MetricsConfig struct {
	// Registry receives the metrics. Default: a new registry of its own
	// (Metrics.Handler serves it).
	Registry *prometheus.Registry
	// MaxCallers bounds the distinct values of the server side's caller
	// label (the callers' client.Config.Name); further callers are
	// counted as "other". Default 100.
	MaxCallers int
	// Logger receives failures to read queue lengths. Default slog.Default().
	Logger *slog.Logger
}

// Metrics are the mesh's Prometheus metrics, on both sides of a call:
//
//	fnmesh_client_calls_total{caller,service,function,code}
//	fnmesh_client_call_duration_seconds{caller,service,function,code}   histogram
//	fnmesh_client_in_flight{caller,service,function}
//	fnmesh_client_breaker_state{caller,function}     0 closed, 1 half-open, 2 open
//	fnmesh_server_calls_total{service,function,caller,code}
//	fnmesh_server_call_duration_seconds{service,function,code}   histogram
//	fnmesh_server_in_flight{service,function}
//	fnmesh_server_retries_total{service,function}     runs of a send after its first
//	fnmesh_queue_backlog{service}                      requests no replica took yet
//	fnmesh_queue_pending{service}                      taken, not yet acknowledged
//	fnmesh_dead_letters{service}                       entries on the dead-letter stream
//
// code is "ok" or the error's code. function is "service.name". Label
// sets are looked up once per function and code and then cached: a call
// costs a few atomic adds. Metrics also implements registry.StatsSource,
// so replicas report the same counts with their heartbeat (fnmesh top).
type Metrics struct {
	cfg MetricsConfig
	reg *prometheus.Registry

	clientCalls    *prometheus.CounterVec
	clientLatency  *prometheus.HistogramVec
	clientInFlight *prometheus.GaugeVec
	clientBreaker  *prometheus.GaugeVec
	serverCalls    *prometheus.CounterVec
	serverLatency  *prometheus.HistogramVec
	serverInFlight *prometheus.GaugeVec
	serverRetries  *prometheus.CounterVec

	clients  cow[clientKey, *clientFn]
	servers  cow[serverKey, *serverFn]
	callers  cow[string, string] // caller name -> label value
	ncallers atomic.Int64

	queues queueCollector
}

type clientKey struct{ caller, function string }
type serverKey struct{ service, function string }

// NewMetrics creates the metrics and registers them.
func NewMetrics(cfg MetricsConfig) (*Metrics, error) {
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.MaxCallers == 0 {
		cfg.MaxCallers = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	buckets := registry.LatencyBounds
	m := &Metrics{
		cfg: cfg, reg: cfg.Registry,
		clientCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fnmesh_client_calls_total", Help: "Calls and sends made, by outcome code (ok or the error's code).",
		}, []string{"caller", "service", "function", "code"}),
		clientLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fnmesh_client_call_duration_seconds", Help: "Time from Call until its result or error (for a send: until queued).", Buckets: buckets,
		}, []string{"caller", "service", "function", "code"}),
		clientInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fnmesh_client_in_flight", Help: "Calls waiting for their result.",
		}, []string{"caller", "service", "function"}),
		clientBreaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fnmesh_client_breaker_state", Help: "Circuit breaker in front of a function: 0 closed, 1 half-open, 2 open.",
		}, []string{"caller", "function"}),
		serverCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fnmesh_server_calls_total", Help: "Runs of functions, by caller and outcome code (refusals by token or policy included).",
		}, []string{"service", "function", "caller", "code"}),
		serverLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fnmesh_server_call_duration_seconds", Help: "Time a replica spent on a run, checks included.", Buckets: buckets,
		}, []string{"service", "function", "code"}),
		serverInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fnmesh_server_in_flight", Help: "Runs in progress on this process's replicas.",
		}, []string{"service", "function"}),
		serverRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fnmesh_server_retries_total", Help: "Runs of a sent request after its first attempt.",
		}, []string{"service", "function"}),
	}
	m.queues = queueCollector{log: cfg.Logger, services: map[string]*queueSource{},
		backlog: prometheus.NewDesc("fnmesh_queue_backlog", "Requests on the service's streams that no replica has taken yet.", []string{"service"}, nil),
		pending: prometheus.NewDesc("fnmesh_queue_pending", "Requests taken by a replica and not yet acknowledged.", []string{"service"}, nil),
		dead:    prometheus.NewDesc("fnmesh_dead_letters", "Entries on the service's dead-letter stream.", []string{"service"}, nil),
	}
	for _, c := range []prometheus.Collector{m.clientCalls, m.clientLatency, m.clientInFlight, m.clientBreaker,
		m.serverCalls, m.serverLatency, m.serverInFlight, m.serverRetries, &m.queues} {
		if err := m.reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return string(fnmesh.CodeOf(err))
}

// ---- client side

type clientFn struct {
	inFlight prometheus.Gauge
	codes    cow[string, *clientCode]
	calls    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	labels   [3]string
}

type clientCode struct {
	calls   prometheus.Counter
	latency prometheus.Observer
}

func (f *clientFn) code(c string) *clientCode {
	return f.codes.get(c, func() *clientCode {
		return &clientCode{
			calls:   f.calls.WithLabelValues(f.labels[0], f.labels[1], f.labels[2], c),
			latency: f.latency.WithLabelValues(f.labels[0], f.labels[1], f.labels[2], c),
		}
	})
}

// ClientInterceptor counts every Call and Send of a client whose name (the
// caller label) is caller.
func (m *Metrics) ClientInterceptor(caller string) client.Interceptor {
	return func(next client.Invoker) client.Invoker {
		return func(ctx context.Context, inv *client.Invocation) (json.RawMessage, error) {
			f := m.clients.get(clientKey{caller, inv.Function}, func() *clientFn {
				return &clientFn{
					inFlight: m.clientInFlight.WithLabelValues(caller, inv.Service, inv.Function),
					calls:    m.clientCalls, latency: m.clientLatency,
					labels: [3]string{caller, inv.Service, inv.Function},
				}
			})
			start := time.Now()
			f.inFlight.Inc()
			res, err := next(ctx, inv)
			f.inFlight.Dec()
			c := f.code(codeLabel(err))
			c.calls.Inc()
			c.latency.Observe(time.Since(start).Seconds())
			return res, err
		}
	}
}

// BreakerStateChange returns a client.BreakerConfig.OnStateChange that
// records breaker states, calling then (if not nil) too.
func (m *Metrics) BreakerStateChange(caller string, then func(function string, from, to gobreaker.State)) func(string, gobreaker.State, gobreaker.State) {
	return func(function string, from, to gobreaker.State) {
		m.clientBreaker.WithLabelValues(caller, function).Set(float64(to))
		if then != nil {
			then(function, from, to)
		}
	}
}

// InstrumentClient adds the metrics to a client's configuration: the
// interceptor (outermost) and the breaker-state hook. The caller label is
// cfg.Name, which should name the calling service (a bounded set).
func (m *Metrics) InstrumentClient(cfg *client.Config) {
	caller := cfg.Name
	if caller == "" {
		caller = "unnamed"
	}
	cfg.Interceptors = append([]client.Interceptor{m.ClientInterceptor(caller)}, cfg.Interceptors...)
	cfg.Breaker.OnStateChange = m.BreakerStateChange(caller, cfg.Breaker.OnStateChange)
}

// ---- server side

type serverFn struct {
	inFlight prometheus.Gauge
	retries  prometheus.Counter
	calls    cow[[2]string, prometheus.Counter] // caller, code
	latency  cow[string, prometheus.Observer]   // code
	service  string
	function string

	// For the registry's heartbeat (fnmesh top).
	nCalls  atomic.Uint64
	nErrors atomic.Uint64
	running atomic.Int64
	buckets []atomic.Uint64 // len(LatencyBounds)+1
	name    string
}

func (m *Metrics) serverFn(service, function string) *serverFn {
	return m.servers.get(serverKey{service, function}, func() *serverFn {
		full := service + "." + function
		return &serverFn{
			inFlight: m.serverInFlight.WithLabelValues(service, full),
			retries:  m.serverRetries.WithLabelValues(service, full),
			service:  service, function: full, name: function,
			buckets: make([]atomic.Uint64, len(registry.LatencyBounds)+1),
		}
	})
}

// caller maps a caller's name to its label value, bounded by MaxCallers.
func (m *Metrics) caller(name string) string {
	return m.callers.get(name, func() string {
		if name == "" {
			return "unknown"
		}
		if m.ncallers.Add(1) > int64(m.cfg.MaxCallers) {
			return "other"
		}
		return name
	})
}

// ServerInterceptor counts every run of every function of a service;
// put it in handlers.Config.Interceptors to see refusals by the token
// check and the policy too.
func (m *Metrics) ServerInterceptor() handlers.Middleware {
	return func(next handlers.Handler) handlers.Handler {
		return handlers.HandlerFunc(func(ctx context.Context, req *handlers.Request) (any, error) {
			f := m.serverFn(req.Service, req.Function)
			if req.Attempt > 1 {
				f.retries.Inc()
			}
			start := time.Now()
			f.inFlight.Inc()
			f.running.Add(1)
			out, err := next.Serve(ctx, req)
			d := time.Since(start)
			f.running.Add(-1)
			f.inFlight.Dec()
			code := codeLabel(err)
			caller := m.caller(req.Caller)
			f.calls.get([2]string{caller, code}, func() prometheus.Counter {
				return m.serverCalls.WithLabelValues(f.service, f.function, caller, code)
			}).Inc()
			f.latency.get(code, func() prometheus.Observer {
				return m.serverLatency.WithLabelValues(f.service, f.function, code)
			}).Observe(d.Seconds())
			f.nCalls.Add(1)
			if err != nil {
				f.nErrors.Add(1)
			}
			f.buckets[bucket(d.Seconds())].Add(1)
			return out, err
		})
	}
}

func bucket(s float64) int {
	return sort.SearchFloat64s(registry.LatencyBounds, s)
}

// ReplicaStats implements registry.StatsSource: the counts of service's
// functions run in this process.
func (m *Metrics) ReplicaStats(service string) map[string]registry.FunctionStats {
	out := map[string]registry.FunctionStats{}
	for k, f := range m.servers.snapshot() {
		if k.service != service {
			continue
		}
		fs := registry.FunctionStats{Calls: f.nCalls.Load(), Errors: f.nErrors.Load(), InFlight: f.running.Load(), Latency: make([]uint64, len(f.buckets))}
		for i := range f.buckets {
			fs.Latency[i] = f.buckets[i].Load()
		}
		out[f.name] = fs
	}
	return out
}

// InstrumentService adds the metrics to a service's configuration: the
// server interceptor (outermost), the queue plugin (backlog, pending and
// dead letters of the service, read when scraped), and /metrics on the
// ops server (set OpsAddr to serve it).
func (m *Metrics) InstrumentService(cfg *handlers.Config) {
	cfg.Interceptors = append([]handlers.Middleware{m.ServerInterceptor()}, cfg.Interceptors...)
	cfg.Plugins = append(cfg.Plugins, m.QueuePlugin())
	if cfg.OpsHandlers == nil {
		cfg.OpsHandlers = map[string]http.Handler{}
	}
	cfg.OpsHandlers["/metrics"] = m.Handler()
}

// ---- queue gauges

// QueuePlugin is the handlers.Plugin that adds a replica's service to the
// queue gauges while the replica runs.
func (m *Metrics) QueuePlugin() handlers.Plugin { return queuePlugin{m} }

type queuePlugin struct{ m *Metrics }

func (p queuePlugin) StartReplica(_ context.Context, r handlers.ReplicaInfo) (func(), error) {
	store, err := registry.StoreFor(r.Bus)
	if err != nil {
		return nil, err
	}
	return p.m.queues.add(r.Service, store), nil
}

type queueSource struct {
	store registry.Store
	refs  int
}

type queueCollector struct {
	log              *slog.Logger
	backlog, pending *prometheus.Desc
	dead             *prometheus.Desc
	mu               sync.Mutex
	services         map[string]*queueSource
	warnedAt         time.Time
	warnMu           sync.Mutex
}

func (q *queueCollector) add(service string, store registry.Store) func() {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.services[service]
	if s == nil {
		s = &queueSource{store: store}
		q.services[service] = s
	}
	s.refs++
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			if s.refs--; s.refs == 0 {
				delete(q.services, service)
			}
		})
	}
}

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.backlog
	ch <- q.pending
	ch <- q.dead
}

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	stores := make(map[string]registry.Store, len(q.services))
	for name, s := range q.services {
		stores[name] = s.store
	}
	q.mu.Unlock()
	for name, store := range stores {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		qu, err := store.Queue(ctx, name)
		cancel()
		if err != nil {
			q.warnMu.Lock()
			if time.Since(q.warnedAt) > time.Minute {
				q.warnedAt = time.Now()
				q.log.Warn("metrics: cannot read the queue", "service", name, "err", err)
			}
			q.warnMu.Unlock()
			continue
		}
		ch <- prometheus.MustNewConstMetric(q.backlog, prometheus.GaugeValue, float64(qu.Backlog), name)
		ch <- prometheus.MustNewConstMetric(q.pending, prometheus.GaugeValue, float64(qu.Pending), name)
		ch <- prometheus.MustNewConstMetric(q.dead, prometheus.GaugeValue, float64(qu.DeadLetters), name)
	}
}

// ---- copy-on-write maps: lock-free reads for label children

type cow[K comparable, V any] struct {
	m  atomic.Pointer[map[K]V]
	mu sync.Mutex
}

func (c *cow[K, V]) get(k K, make_ func() V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	next := map[K]V{}
	if old != nil {
		for a, b := range *old {
			next[a] = b
		}
	}
	v := make_()
	next[k] = v
	c.m.Store(&next)
	return v
}

func (c *cow[K, V]) snapshot() map[K]V {
	if m := c.m.Load(); m != nil {
		return *m
	}
	return nil
}

// Describe sends the descriptions of every metric, for tools that check
// dashboards against them.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range []prometheus.Collector{m.clientCalls, m.clientLatency, m.clientInFlight, m.clientBreaker,
		m.serverCalls, m.serverLatency, m.serverInFlight, m.serverRetries, &m.queues} {
		c.Describe(ch)
	}
}
