package gateway

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's own, on a registry of its own (not the
// process-wide default), served at /metrics.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec   // function, code
	duration *prometheus.HistogramVec // function
	inFlight prometheus.Gauge

	mu    sync.Mutex
	known map[string]bool // functions that answered once, so labelled by name
}

// maxLabelledFunctions bounds the function label's values: anyone can
// name any function in a URL, and a label per name would grow without
// end. Functions in the catalog, and up to this many others that answered
// once, are labelled by name; the rest are "other".
const maxLabelledFunctions = 500

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fnmesh_gateway_requests_total",
			Help: "Function requests by function and outcome code (ok, accepted, or the error code).",
		}, []string{"function", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fnmesh_gateway_request_duration_seconds",
			Help:    "Time from request to response, by function.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"function"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fnmesh_gateway_requests_in_flight",
			Help: "Function requests being served now.",
		}),
		known: map[string]bool{},
	}
	m.reg.MustRegister(m.requests, m.duration, m.inFlight)
	return m
}

// label returns the function label for a request's outcome.
func (m *metrics) label(function string, listed, answered bool) string {
	if listed {
		return function
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.known[function] {
		return function
	}
	if answered && len(m.known) < maxLabelledFunctions {
		m.known[function] = true
		return function
	}
	return "other"
}

func (m *metrics) observe(function, code string, d time.Duration) {
	m.requests.WithLabelValues(function, code).Inc()
	m.duration.WithLabelValues(function).Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
