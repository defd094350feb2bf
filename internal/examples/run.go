package examples

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
)

// ServiceApp returns the command line of an example service binary: it
// runs one replica on Redis until SIGINT or SIGTERM, then drains.
func ServiceApp(name, usage string, build func(cfg handlers.Config, log *slog.Logger) *handlers.Service) *cli.App {
	return &cli.App{
		Name:  name,
		Usage: usage,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "redis", EnvVars: []string{"REDIS_URL"}, Value: "redis://127.0.0.1:6379", Usage: "Redis URL"},
			&cli.StringFlag{Name: "replica-id", Usage: "name of this replica (default host-pid-random)"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "requests run at once"},
			&cli.BoolFlag{Name: "insecure", Usage: "run without a token check"},
			&cli.DurationFlag{Name: "drain", Value: 0, Usage: "drain timeout on SIGTERM (default 30s)"},
			&cli.BoolFlag{Name: "verbose", Usage: "log every call"},
		},
		Action: func(c *cli.Context) error {
			level := slog.LevelInfo
			if c.Bool("verbose") {
				level = slog.LevelDebug
			}
			log := Logger(level)
			cfg := handlers.Config{
				ReplicaID: c.String("replica-id"), Concurrency: c.Int("concurrency"),
				DrainTimeout: c.Duration("drain"), Logger: log,
			}
			if c.Bool("insecure") {
				cfg.AllowUnauthenticated = true
			} else {
				cfg.Auth = Verifier()
			}
			b, err := bus.NewRedis(bus.RedisConfig{URL: c.String("redis")})
			if err != nil {
				return err
			}
			defer b.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			svc := build(cfg, log)
			go func() {
				<-svc.Started()
				log.Info("replica serving", "service", svc.Name(), "functions", svc.Functions(), "redis", c.String("redis"))
			}()
			if err := svc.Run(ctx, b); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			log.Info("replica stopped", "service", svc.Name())
			return nil
		},
	}
}
