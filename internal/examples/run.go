package examples

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/security"
	"github.com/fnmesh/fnmesh/telemetry"
)

// Defaults of the example binaries' flags. deployments/ relies on them
// (deployments/deployments_test.go checks the manifests against them).
const (
	DefaultRedisURL    = "redis://127.0.0.1:6379"
	DefaultOpsAddr     = ":9090"
	DefaultConcurrency = 64
)

// ServiceApp returns the command line of an example service binary: it
// runs one replica on Redis until SIGINT or SIGTERM, then drains.
func ServiceApp(name, usage string, build func(cfg handlers.Config, log *slog.Logger) *handlers.Service) *cli.App {
	return &cli.App{
		Name:  name,
		Usage: usage,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "replica-id", Usage: "name of this replica (default host-pid-random)"},
			&cli.IntFlag{Name: "concurrency", Value: DefaultConcurrency, Usage: "requests run at once"},
			&cli.StringFlag{Name: "ops-addr", EnvVars: []string{"OPS_ADDR"}, Value: DefaultOpsAddr, Usage: "serve " + handlers.HealthPath + " (200 serving, 503 starting or draining) and /metrics here; empty: off"},
			&cli.BoolFlag{Name: "insecure", Usage: "run without a token check"},
			&cli.DurationFlag{Name: "drain", Value: 0, Usage: "drain timeout on SIGTERM (default 30s)"},
			&cli.BoolFlag{Name: "verbose", Usage: "log every call"},
			&cli.StringFlag{Name: "policy", Usage: "YAML file of access rules per function (see docs/SECURITY.md)"},
			&cli.StringFlag{Name: "version", Value: "dev", Usage: "version shown by fnmesh ls"},
		}, redisflags.Flags("Redis URL (default "+DefaultRedisURL+"): redis://host:port, redis+cluster://host:port?addr=host2:port2, redis+sentinel://host:port?master_name=NAME (rediss for TLS)")...),
		Action: func(c *cli.Context) error {
			level := slog.LevelInfo
			if c.Bool("verbose") {
				level = slog.LevelDebug
			}
			log := slog.New(telemetry.LogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
			cfg := handlers.Config{
				ReplicaID: c.String("replica-id"), Concurrency: c.Int("concurrency"),
				DrainTimeout: c.Duration("drain"), Logger: log, OpsAddr: c.String("ops-addr"),
			}
			if c.Bool("insecure") {
				cfg.AllowUnauthenticated = true
			} else {
				cfg.Auth = Verifier()
			}
			if path := c.String("policy"); path != "" {
				p, err := security.LoadPolicy(path)
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				cfg.Policy = p
			}
			metrics, err := telemetry.NewMetrics(telemetry.MetricsConfig{Logger: log})
			if err != nil {
				return err
			}
			metrics.InstrumentService(&cfg)
			telemetry.NewTracing(nil).InstrumentService(&cfg)
			cfg.Plugins = append(cfg.Plugins, registry.NewAnnouncer(registry.Config{Version: c.String("version"), Stats: metrics}))
			rc, err := redisflags.Config(c, DefaultRedisURL)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			b, err := bus.NewRedis(rc)
			if err != nil {
				return err
			}
			defer b.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			svc := build(cfg, log)
			go func() {
				<-svc.Started()
				log.Info("replica serving", "service", svc.Name(), "functions", svc.Functions(), "redis", redactURL(rc.URL))
			}()
			if err := svc.Run(ctx, b); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			log.Info("replica stopped", "service", svc.Name())
			return nil
		},
	}
}

// redactURL hides the password of a Redis URL for logs.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}
