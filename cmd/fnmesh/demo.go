package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/internal/demo"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run example services and a caller: load balancing, a send, errors, access checks, a breaker",
		Flags: []cli.Flag{redisFlag("run over Redis at this URL instead of the in-memory bus")},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			return demo.Run(ctx, c.App.Writer, c.String("redis"))
		},
	}
}
