package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/internal/redisflags"
)

func callFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "give up after this long (call); drop if not run by then (send, 0 = never)"},
		&cli.StringFlag{Name: "token", EnvVars: []string{"FNMESH_TOKEN"}, Usage: "bearer token (JWT) sent with the request"},
		&cli.BoolFlag{Name: "json", Usage: "print JSON: the result (call), {\"request_id\"} (send), or the error as {code, message, fields, request_id}"},
		&cli.BoolFlag{Name: "skip-registry-check", Usage: "send even if no replica announced the function (for callers that cannot read the registry)"},
	}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...)
}

func callCommand() *cli.Command {
	return &cli.Command{
		Name:        "call",
		Usage:       "call a function and print its JSON result",
		ArgsUsage:   "SERVICE.FUNCTION JSON|-",
		Description: "The arguments are a JSON value, or - to read it from stdin.",
		Flags:       callFlags(),
		Action: func(c *cli.Context) error {
			return withClient(c, func(ctx context.Context, cl *client.Client, fn string, args json.RawMessage) error {
				var out json.RawMessage
				var info client.ReplyInfo
				if err := cl.Call(ctx, fn, args, &out, client.WithTimeout(c.Duration("timeout")), client.WithToken(c.String("token")), client.WithReplyInfo(&info)); err != nil {
					return &requestError{err: err, id: info.RequestID}
				}
				fmt.Fprintln(c.App.Writer, string(out))
				return nil
			})
		},
	}
}

func sendCommand() *cli.Command {
	flags := callFlags()
	flags[0] = &cli.DurationFlag{Name: "timeout", Usage: "drop the request unrun if no replica took it by then (0 = never)"}
	return &cli.Command{
		Name:        "send",
		Usage:       "queue a function call without waiting for its result",
		ArgsUsage:   "SERVICE.FUNCTION JSON|-",
		Description: "The arguments are a JSON value, or - to read it from stdin.",
		Flags:       flags,
		Action: func(c *cli.Context) error {
			return withClient(c, func(ctx context.Context, cl *client.Client, fn string, args json.RawMessage) error {
				var info client.ReplyInfo
				if err := cl.Send(ctx, fn, args, client.WithTimeout(c.Duration("timeout")), client.WithToken(c.String("token")), client.WithReplyInfo(&info)); err != nil {
					return &requestError{err: err, id: info.RequestID}
				}
				if c.Bool("json") {
					return printJSON(c.App.Writer, map[string]string{"request_id": info.RequestID})
				}
				fmt.Fprintf(c.App.Writer, "queued %s\n", info.RequestID)
				return nil
			})
		},
	}
}

// maxStdinArgs bounds the arguments read from stdin.
const maxStdinArgs = 16 << 20

func withClient(c *cli.Context, run func(ctx context.Context, cl *client.Client, fn string, args json.RawMessage) error) error {
	if c.NArg() != 2 {
		return cli.Exit(fmt.Sprintf("usage: fnmesh %s SERVICE.FUNCTION JSON|-", c.Command.Name), 2)
	}
	fn, raw := c.Args().Get(0), c.Args().Get(1)
	if raw == "-" {
		in, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdinArgs+1))
		if err != nil {
			return cli.Exit("reading the arguments from stdin: "+err.Error(), 2)
		}
		if len(in) > maxStdinArgs {
			return cli.Exit(fmt.Sprintf("invalid_argument: arguments on stdin exceed %d bytes", maxStdinArgs), 2)
		}
		raw = string(bytes.TrimSpace(in))
	}
	if !json.Valid([]byte(raw)) {
		return cli.Exit(fmt.Sprintf("invalid_argument: arguments are not valid JSON: %s", raw), 2)
	}
	b, err := openBus(c)
	if err != nil {
		return err
	}
	defer b.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cl, err := client.New(b, client.Config{Logger: examples.Logger(8), Breaker: client.BreakerConfig{Disabled: true}, SkipRegistryCheck: c.Bool("skip-registry-check")})
	if err != nil {
		return err
	}
	defer cl.Close()
	return run(ctx, cl, fn, json.RawMessage(raw))
}
