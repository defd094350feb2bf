package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/meshview"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/registry"
)

// withStore opens the registry on the Redis the flags name.
func withStore(c *cli.Context, run func(ctx context.Context, store registry.Store) error) error {
	b, err := openBus(c)
	if err != nil {
		return err
	}
	defer b.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return run(ctx, registry.NewRedisStore(b.Client()))
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list services, their replicas and functions, backlog and pending requests",
		Flags: append([]cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...),
		Action: func(c *cli.Context) error {
			return withStore(c, func(ctx context.Context, store registry.Store) error {
				services, err := meshview.Read(ctx, store, c.Args().Slice()...)
				if err != nil {
					return err
				}
				return meshview.WriteLS(c.App.Writer, services, c.Bool("json"), time.Now())
			})
		},
	}
}

func describeCommand() *cli.Command {
	return &cli.Command{
		Name:      "describe",
		Usage:     "show the request and response JSON Schemas of a service's functions",
		ArgsUsage: "SERVICE[.FUNCTION]",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "diff", Usage: "show how live replicas' request schemas differ from the oldest replica's"},
		}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("usage: fnmesh describe SERVICE[.FUNCTION] [--json] [--diff]", 2)
			}
			service, function, _ := strings.Cut(c.Args().First(), ".")
			return withStore(c, func(ctx context.Context, store registry.Store) error {
				services, err := meshview.Read(ctx, store, service)
				if err != nil {
					return err
				}
				if err := describeCheck(services[0].View, function); err != nil {
					return err
				}
				err = meshview.WriteDescribe(c.App.Writer, services[0], function, c.Bool("json"), c.Bool("diff"))
				var nf meshview.ErrNoSuchFunction
				if errors.As(err, &nf) {
					return cli.Exit(err.Error(), 1)
				}
				return err
			})
		},
	}
}

// openBus opens the Redis bus the command's flags name; a bad flag or URL
// is a usage error (exit 2).
func openBus(c *cli.Context) (*bus.Redis, error) {
	rc, err := redisflags.Config(c, redisflags.Default)
	if err != nil {
		return nil, cli.Exit(err.Error(), 2)
	}
	b, err := bus.NewRedis(rc)
	if err != nil {
		return nil, cli.Exit(err.Error(), 2)
	}
	return b, nil
}
