package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/registry"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "say where a sent request stands: queued, running (on which replica), done, dead_lettered (why), or unknown",
		ArgsUsage: "REQUEST_ID",
		Flags:     append([]cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("usage: fnmesh status REQUEST_ID [--json]", 2)
			}
			b, err := openBus(c)
			if err != nil {
				return err
			}
			defer b.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			st, err := registry.NewRedisStatusStore(b.Client()).Get(ctx, c.Args().First())
			if err != nil {
				return fnmesh.Errorf(fnmesh.CodeUnavailable, "request status: %v", err)
			}
			if c.Bool("json") {
				out, _ := json.Marshal(st)
				fmt.Fprintln(c.App.Writer, string(out))
			} else {
				fmt.Fprintln(c.App.Writer, describeStatus(st))
			}
			if st.State == registry.StateUnknown {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}

func describeStatus(st registry.Status) string {
	what := st.Service + "." + st.Function
	age := ""
	if !st.Updated.IsZero() {
		age = fmt.Sprintf(" (%v ago)", time.Since(st.Updated).Round(time.Millisecond))
	}
	switch st.State {
	case registry.StateQueued:
		if st.Replica != "" {
			return fmt.Sprintf("queued %s: handed back by replica %s, waiting for a replica%s", what, st.Replica, age)
		}
		return fmt.Sprintf("queued %s: waiting for a replica%s", what, age)
	case registry.StateRunning:
		return fmt.Sprintf("running %s on replica %s, attempt %d%s", what, st.Replica, st.Attempt, age)
	case registry.StateDone:
		return fmt.Sprintf("done %s on replica %s%s", what, st.Replica, age)
	case registry.StateDeadLettered:
		return fmt.Sprintf("dead_lettered %s after %d attempt(s): %s: %s%s", what, st.Attempt, st.Code, st.Reason, age)
	}
	return fmt.Sprintf("unknown: no record of %s (never sent, sent as a call, or older than its record's TTL)", st.ID)
}

// describeCheck says, with the mesh's codes, why describe has nothing to
// show: not_found for a service or function no replica served lately,
// unavailable for one served lately with no live replica now.
func describeCheck(v *registry.ServiceView, function string) error {
	switch {
	case len(v.Replicas) == 0 && len(v.Known) == 0:
		return fnmesh.Errorf(fnmesh.CodeNotFound, "service %s is not in the registry: no replica of it ran lately", v.Name)
	case function == "" && len(v.Replicas) == 0:
		return fnmesh.Errorf(fnmesh.CodeUnavailable, "no live replica of service %s", v.Name)
	case function == "" || v.Serves(function):
		return nil
	case v.Knows(function):
		return fnmesh.Errorf(fnmesh.CodeUnavailable, "no live replica of service %s serves %s (it did lately)", v.Name, function)
	}
	return fnmesh.Errorf(fnmesh.CodeNotFound, "service %s has no function %s", v.Name, function)
}
