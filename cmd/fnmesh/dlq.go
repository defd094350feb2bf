package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/redisflags"
)

func dlqCommand() *cli.Command {
	flags := redisflags.Flags("Redis URL (default " + redisflags.Default + ")")
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON"}
	return &cli.Command{
		Name:  "dlq",
		Usage: "look at the requests that failed for good, and send them again",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list a service's dead letters, oldest first (without SERVICE: count per service)",
				ArgsUsage: "[SERVICE]", Flags: append(flags, jsonFlag, &cli.IntFlag{Name: "n", Value: 100, Usage: "most recent N"}),
				Action: withBus(func(ctx context.Context, c *cli.Context, b *bus.Redis) error {
					if c.NArg() == 0 {
						return listServices(ctx, c, b)
					}
					dls, err := b.DeadLetters(ctx, c.Args().First(), c.Int("n"))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, deadLetterViews(dls))
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tFUNCTION\tCODE\tATTEMPTS\tAT\tREASON")
					for _, d := range dls {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", d.EntryID, d.Fields[bus.FieldFunction], d.Code, d.Attempts,
							d.At.Format(time.DateTime), truncate(d.Reason, 60))
					}
					return tw.Flush()
				}),
			},
			{
				Name: "show", Usage: "show one dead letter in full", ArgsUsage: "ID",
				Flags: append(flags, &cli.StringFlag{Name: "service", Usage: "the service (default: search them all)"}),
				Action: withBus(func(ctx context.Context, c *cli.Context, b *bus.Redis) error {
					if c.NArg() != 1 {
						return cli.Exit("usage: fnmesh dlq show ID", 2)
					}
					id := c.Args().First()
					service := c.String("service")
					var d bus.DeadLetter
					if service == "" {
						var err error
						if service, d, err = b.FindDeadLetter(ctx, id); err != nil {
							return cli.Exit(err.Error(), 1)
						}
					} else {
						dls, err := b.DeadLetters(ctx, service, 0)
						if err != nil {
							return err
						}
						found := false
						for _, x := range dls {
							if x.EntryID == id {
								d, found = x, true
							}
						}
						if !found {
							return cli.Exit("no dead letter "+id+" in "+service, 1)
						}
					}
					v := deadLetterViews([]bus.DeadLetter{d})[0]
					v.Service = service
					return printJSON(c.App.Writer, v)
				}),
			},
			{
				Name: "replay", Usage: "send dead letters again as new requests (all of SERVICE's without IDs)", ArgsUsage: "SERVICE [ID...]",
				Flags: append([]cli.Flag{&cli.StringFlag{Name: "token", EnvVars: []string{"FNMESH_TOKEN"}, Usage: "bearer token (JWT) the replayed requests carry (default: the one each first came with, often expired by now)"}, jsonFlag}, flags...),
				Action: withBus(func(ctx context.Context, c *cli.Context, b *bus.Redis) error {
					if c.NArg() < 1 {
						return cli.Exit("usage: fnmesh dlq replay SERVICE [ID...]", 2)
					}
					n, err := b.ReplayDeadLettersWithToken(ctx, c.Args().First(), c.String("token"), c.Args().Tail()...)
					if c.Bool("json") {
						if err != nil {
							return err
						}
						return printJSON(c.App.Writer, map[string]int{"replayed": n})
					}
					fmt.Fprintf(c.App.Writer, "replayed %d\n", n)
					return err
				}),
			},
			{
				Name: "purge", Usage: "delete dead letters: SERVICE's given IDs, all of SERVICE's, or with --all every service's", ArgsUsage: "SERVICE [ID...] | --all",
				Flags: append([]cli.Flag{jsonFlag, &cli.BoolFlag{Name: "all", Usage: "purge every service's dead letters"}}, flags...),
				Action: withBus(func(ctx context.Context, c *cli.Context, b *bus.Redis) error {
					services := c.Args().Slice()
					var ids []string
					switch {
					case c.Bool("all") && c.NArg() == 0:
						var err error
						if services, err = b.DeadLetterServices(ctx); err != nil {
							return err
						}
					case !c.Bool("all") && c.NArg() >= 1:
						services, ids = services[:1], services[1:]
					default:
						return cli.Exit("usage: fnmesh dlq purge SERVICE [ID...] | fnmesh dlq purge --all", 2)
					}
					total := 0
					for _, svc := range services {
						n, err := b.PurgeDeadLetters(ctx, svc, ids...)
						total += n
						if err != nil {
							return err
						}
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, map[string]int{"purged": total})
					}
					fmt.Fprintf(c.App.Writer, "purged %d\n", total)
					return nil
				}),
			},
		},
	}
}

func listServices(ctx context.Context, c *cli.Context, b *bus.Redis) error {
	services, err := b.DeadLetterServices(ctx)
	if err != nil {
		return err
	}
	counts := map[string]int64{}
	for _, s := range services {
		counts[s], _ = b.Client().XLen(ctx, bus.DeadLetterTopic(s)).Result()
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, counts)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tDEAD LETTERS")
	for _, s := range services {
		fmt.Fprintf(tw, "%s\t%d\n", s, counts[s])
	}
	return tw.Flush()
}

// deadLetterView is a dead letter as the CLI prints it.
type deadLetterView struct {
	ID       string            `json:"id"`
	Service  string            `json:"service,omitempty"`
	Function string            `json:"function"`
	Code     string            `json:"code"`
	Reason   string            `json:"reason"`
	Attempts int               `json:"attempts"`
	Replica  string            `json:"replica,omitempty"`
	At       time.Time         `json:"at"`
	Origin   string            `json:"origin_entry,omitempty"`
	Args     json.RawMessage   `json:"args,omitempty"`
	Fields   map[string]string `json:"fields"`
}

func deadLetterViews(dls []bus.DeadLetter) []deadLetterView {
	out := make([]deadLetterView, 0, len(dls))
	for _, d := range dls {
		fields := map[string]string{}
		for k, v := range d.Fields {
			if k == bus.FieldToken {
				v = "(redacted)" // a bearer token is a secret
			}
			fields[k] = v
		}
		v := deadLetterView{ID: d.EntryID, Function: d.Fields[bus.FieldFunction], Code: string(d.Code), Reason: d.Reason,
			Attempts: d.Attempts, Replica: d.Replica, At: d.At, Origin: d.Origin, Fields: fields}
		if json.Valid(d.Payload) {
			v.Args = d.Payload
		} else if len(d.Payload) > 0 {
			v.Fields["p"] = string(d.Payload)
		}
		out = append(out, v)
	}
	return out
}

func withBus(run func(ctx context.Context, c *cli.Context, b *bus.Redis) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		b, err := openBus(c)
		if err != nil {
			return err
		}
		defer b.Close()
		ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
		defer cancel()
		return run(ctx, c, b)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
