package examples

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redact"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/internal/redislog"
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
		// main prints errors and picks the exit status (2: usage).
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "replica-id", Usage: "name of this replica (default host-pid-random)"},
			&cli.IntFlag{Name: "concurrency", Value: DefaultConcurrency, Usage: "requests run at once"},
			&cli.StringFlag{Name: "ops-addr", EnvVars: []string{"OPS_ADDR"}, Value: DefaultOpsAddr, Usage: "serve " + handlers.HealthPath + " (200 serving, 503 starting or draining) and /metrics here; empty: off"},
			&cli.BoolFlag{Name: "insecure", Usage: "run without a token check"},
			&cli.BoolFlag{Name: "demo", Usage: "verify tokens with the public demo secret when " + SecretEnv + " is not set (never outside a demo)"},
			&cli.DurationFlag{Name: "drain", Value: 30 * time.Second, Usage: "drain timeout on SIGTERM"},
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
			redislog.Route(log)
			cfg := handlers.Config{
				ReplicaID: c.String("replica-id"), Concurrency: c.Int("concurrency"),
				DrainTimeout: c.Duration("drain"), Logger: log, OpsAddr: c.String("ops-addr"),
			}
			if c.Bool("insecure") {
				cfg.AllowUnauthenticated = true
			} else {
				secret, err := Secret(c.Bool("demo"))
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: secret})
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				cfg.Auth = v
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
				log.Info("replica serving", "service", svc.Name(), "functions", svc.Functions(), "redis", redact.URL(rc.URL))
			}()
			if err := svc.Run(ctx, b); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			log.Info("replica stopped", "service", svc.Name())
			return nil
		},
	}
}

// ExitCode is the exit status of a command that failed with err: the
// code a cli.Exit error carries (2 for usage errors), else 1.
func ExitCode(err error) int {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}
