package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"time"

	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/security"
)

// Caller is what the gateway needs of a client: *client.Client. The
// gateway holds one for all its requests (one reply inbox), never one per
// request.
type Caller interface {
	Call(ctx context.Context, function string, in, out any, opts ...client.CallOption) error
	Send(ctx context.Context, function string, in any, opts ...client.CallOption) error
}

var _ Caller = (*client.Client)(nil)

// Config configures a Gateway. Zero values take the defaults written on
// each field.
type Config struct {
	// Client carries the calls. Required.
	Client Caller
	// Auth verifies the bearer token of every request before the call is
	// made; the token is then forwarded to the function, whose own checks
	// still apply. Required unless AllowUnauthenticated is set.
	Auth security.Verifier
	// AllowUnauthenticated forwards requests without checking their token
	// at the gateway (the functions still check theirs). Must be set
	// explicitly: a gateway with neither Auth nor this fails to start.
	AllowUnauthenticated bool
	// Catalog lists the functions for /v1/functions, /openapi.json and the
	// UI, and marks the ones callable without a token (Public). Default:
	// an empty catalog.
	Catalog Catalog
	// Status answers GET /v1/requests/{id}: where a request sent with
	// ?async=1 stands (registry.StatusStoreFor of the gateway's bus).
	// Default none: that route answers unavailable.
	Status registry.StatusStore
	// CatalogOnly refuses, with not_found, calls of functions the catalog
	// does not list. Default false: any function can be called by name.
	CatalogOnly bool
	// DefaultTimeout bounds calls that ask for no timeout. Default 10s.
	DefaultTimeout time.Duration
	// MaxTimeout caps the timeout a request may ask for (timeout_ms query
	// parameter or X-Fnmesh-Timeout-Ms header). Default 30s.
	MaxTimeout time.Duration
	// MaxBodyBytes rejects larger request bodies with invalid_argument.
	// Default 1 MiB.
	MaxBodyBytes int64
	// CORSOrigins are the origins allowed to call from a browser page on
	// another origin, e.g. "https://app.example.com", or "*" for any.
	// Same-origin requests are always allowed. Default none.
	CORSOrigins []string
	// RateLimit is the requests per second allowed per caller: per token
	// subject when the gateway verified a token, else per client IP.
	// Default 0: no limit.
	RateLimit float64
	// RateBurst is how many requests a caller may make at once above
	// RateLimit. Default: RateLimit rounded up, at least 1.
	RateBurst int
	// TrustForwardedFor takes the client IP for rate limits from the last
	// X-Forwarded-For entry (the one your proxy added). Set it only behind
	// a proxy that sets the header. Default false: the connection's
	// address.
	TrustForwardedFor bool
	// UI serves the function browser page at /ui/. Default false.
	UI bool
	// ShutdownTimeout is how long Serve, once its context ends, lets
	// running requests finish. Default MaxTimeout + 5s.
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long Serve keeps serving, with /healthz
	// answering 503, before it closes its listener: time for a load
	// balancer to stop sending. Default 0.
	ShutdownDelay time.Duration
	// Logger receives the gateway's logs. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Catalog == nil {
		c.Catalog = &StaticCatalog{}
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = 10 * time.Second
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = 30 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.RateBurst == 0 && c.RateLimit > 0 {
		c.RateBurst = max(1, int(math.Ceil(c.RateLimit)))
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = c.MaxTimeout + 5*time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every problem with c (after defaults).
func (c Config) Validate() error {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("gateway: Config.Client is not set"))
	}
	switch {
	case c.Auth == nil && !c.AllowUnauthenticated:
		errs = append(errs, errors.New("gateway: Config.Auth is not set: give a token verifier, or set AllowUnauthenticated to forward tokens unchecked"))
	case c.Auth != nil && c.AllowUnauthenticated:
		errs = append(errs, errors.New("gateway: Config.Auth and AllowUnauthenticated are both set: choose one"))
	}
	if c.DefaultTimeout < 0 || c.MaxTimeout < 0 {
		errs = append(errs, errors.New("gateway: Config.DefaultTimeout and MaxTimeout must be more than 0"))
	}
	if c.DefaultTimeout > c.MaxTimeout {
		errs = append(errs, fmt.Errorf("gateway: Config.DefaultTimeout %v exceeds MaxTimeout %v", c.DefaultTimeout, c.MaxTimeout))
	}
	if c.MaxBodyBytes < 1 {
		errs = append(errs, fmt.Errorf("gateway: Config.MaxBodyBytes is %d, want at least 1", c.MaxBodyBytes))
	}
	if c.RateLimit < 0 || c.RateBurst < 0 {
		errs = append(errs, errors.New("gateway: Config.RateLimit and RateBurst must not be negative"))
	}
	if c.ShutdownTimeout < 0 || c.ShutdownDelay < 0 {
		errs = append(errs, errors.New("gateway: Config.ShutdownTimeout and ShutdownDelay must not be negative"))
	}
	for _, o := range c.CORSOrigins {
		if err := checkOrigin(o); err != nil {
			errs = append(errs, fmt.Errorf("gateway: Config.CORSOrigins: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkOrigin accepts "*" and scheme://host[:port], as browsers send in
// the Origin header.
func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com, or *", o)
	}
	return nil
}
