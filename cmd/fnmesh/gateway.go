package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/internal/redact"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/internal/redislog"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/security"
)

func gatewayCommand() *cli.Command {
	return &cli.Command{
		Name:  "gateway",
		Usage: "serve functions over HTTP: POST /v1/functions/{service}/{function}",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":8080", Usage: "address to listen on"},
			&cli.StringFlag{Name: "catalog", Usage: "JSON file listing functions and their JSON Schemas (for /openapi.json and the UI), e.g. cmd/examples/catalog.json, for a gateway that cannot read the registry (default: the live registry)"},
			&cli.BoolFlag{Name: "skip-registry-check", Usage: "forward calls of functions no replica announced (for a gateway that cannot read the registry)"},
			&cli.BoolFlag{Name: "catalog-only", Usage: "refuse calls of functions the catalog does not list"},
			&cli.BoolFlag{Name: "ui", Usage: "serve the function browser page at /ui/"},
			&cli.BoolFlag{Name: "insecure", Usage: "forward tokens without checking them at the gateway (functions still check theirs)"},
			&cli.StringFlag{Name: "secret", EnvVars: []string{"FNMESH_JWT_SECRET"}, Usage: "HMAC secret verifying HS256 tokens, at least 32 bytes (required unless --insecure or --demo)"},
			&cli.BoolFlag{Name: "demo", Usage: "verify tokens with the public demo secret when --secret and FNMESH_JWT_SECRET are not set (never outside a demo)"},
			&cli.StringSliceFlag{Name: "cors-origin", Usage: "origin allowed to call from a browser page, e.g. https://app.example.com, or * (repeat for more)"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "timeout of calls that ask for none"},
			&cli.DurationFlag{Name: "max-timeout", Value: 30 * time.Second, Usage: "cap on the timeout a request may ask for"},
			&cli.Int64Flag{Name: "max-body", Value: 1 << 20, Usage: "largest request body, in bytes"},
			&cli.Float64Flag{Name: "rate", Usage: "requests per second per token subject or client IP (0: no limit)"},
			&cli.IntFlag{Name: "burst", DefaultText: "--rate rounded up", Usage: "requests at once above --rate"},
			&cli.BoolFlag{Name: "trust-forwarded-for", Usage: "rate-limit by the last X-Forwarded-For address (behind a proxy)"},
			&cli.DurationFlag{Name: "shutdown-delay", Usage: "on SIGTERM, keep serving this long with /healthz at 503 before closing"},
			&cli.BoolFlag{Name: "verbose", Usage: "log every request"},
		}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...),
		Action: runGateway,
	}
}

func runGateway(c *cli.Context) error {
	level := slog.LevelInfo
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	log := examples.Logger(level)
	redislog.Route(log)
	cfg := gateway.Config{
		CatalogOnly: c.Bool("catalog-only"), UI: c.Bool("ui"), CORSOrigins: c.StringSlice("cors-origin"),
		DefaultTimeout: c.Duration("timeout"), MaxTimeout: c.Duration("max-timeout"), MaxBodyBytes: c.Int64("max-body"),
		RateLimit: c.Float64("rate"), RateBurst: c.Int("burst"), TrustForwardedFor: c.Bool("trust-forwarded-for"),
		ShutdownDelay: c.Duration("shutdown-delay"), Logger: log,
	}
	if path := c.String("catalog"); path != "" {
		cat, err := gateway.LoadCatalogFile(path)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		cfg.Catalog = cat
	}
	if c.Bool("insecure") {
		cfg.AllowUnauthenticated = true
	} else {
		secret := []byte(c.String("secret"))
		if len(secret) == 0 {
			if !c.Bool("demo") {
				return cli.Exit(examples.ErrNoSecret.Error()+" (or --secret, or --insecure to leave token checks to the functions)", 2)
			}
			secret = []byte(examples.DemoSecret)
			log.Warn("verifying tokens with the public demo secret (--demo): set FNMESH_JWT_SECRET outside a demo")
		}
		v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: secret})
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		cfg.Auth = v
	}
	// Refuse a bad configuration before connecting to anything.
	probe := cfg
	probe.Client = noCaller{}
	if _, err := gateway.New(probe); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	rc, err := redisflags.Config(c, redisflags.Default)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	b, err := bus.NewRedis(rc)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	defer b.Close()
	host, _ := os.Hostname()
	cl, err := client.New(b, client.Config{Name: fmt.Sprintf("gateway-%s-%d", host, os.Getpid()), Logger: log, SkipRegistryCheck: c.Bool("skip-registry-check")})
	if err != nil {
		return err
	}
	defer cl.Close()
	cfg.Client = cl
	cfg.Status = registry.NewRedisStatusStore(b.Client())
	if c.String("catalog") == "" {
		cfg.Catalog = gateway.NewRegistryCatalog(registry.NewRedisStore(b.Client()), 0, 0)
	}
	g, err := gateway.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := listen(c.String("listen"))
	if err != nil {
		return err
	}
	log.Info("gateway serving", "addr", ln.Addr().String(), "redis", redact.URL(rc.URL), "ui", cfg.UI, "tokens_checked", cfg.Auth != nil)
	// One line on stdout for scripts and tests that wait for readiness.
	fmt.Fprintf(c.App.Writer, "listening on %s\n", ln.Addr())
	if err := g.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("gateway stopped")
	return nil
}

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// noCaller stands in for the client while the configuration is checked.
type noCaller struct{}

func (noCaller) Call(context.Context, string, any, any, ...client.CallOption) error { return nil }
func (noCaller) Send(context.Context, string, any, ...client.CallOption) error      { return nil }
