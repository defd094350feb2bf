package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/internal/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure calls or sends to a trivial function on replicas in this process",
		Description: "Prints one line per mode, e.g. `call p50_us=.. p99_us=.. throughput_per_s=..`,\n" +
			"comparable with ../shared/peers in the same run. --compare also runs the bare\n" +
			"Redis loop (raw-call or raw-send) and prints the ratio.\n\n" +
			"--mode scale starts 1, 2 and 4 replica processes (--counts) of a function that\n" +
			"waits 20 ms (--work io) or burns CPU (--work cpu), drives them with 256 calls in\n" +
			"flight (--concurrency) and prints calls/s and latency per replica count; with\n" +
			"--rounds N it measures the counts N times in turn and prints the medians.\n\n" +
			"--mode local compares, in one run, a Go function called directly, the same\n" +
			"function co-located (in-process through the mesh) without and with an HS256\n" +
			"token, and over the in-memory bus: p50 of sequential calls, calls/s with\n" +
			"--concurrency in flight, and process CPU per call.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mode", Value: "call", Usage: "call, send, raw-call, raw-send, scale or local"},
			&cli.StringFlag{Name: "work", Value: "io", Usage: "scale mode: what the function does, io (waits 20 ms) or cpu (hashes)"},
			&cli.IntSliceFlag{Name: "counts", Value: cli.NewIntSlice(1, 2, 4), Usage: "scale mode: replica processes to measure"},
			&cli.IntFlag{Name: "rounds", Value: 1, Usage: "scale and local modes: measure this many times in turn and print the medians"},
			&cli.IntFlag{Name: "replicas", Value: 2, Usage: "replicas of the function, each with its own connection"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "calls in flight"},
			&cli.DurationFlag{Name: "duration", Value: 3 * time.Second, Usage: "length of the throughput phase"},
			&cli.IntFlag{Name: "n", Value: 2000, Usage: "sequential calls for latency"},
			redisFlag("Redis URL; without it, the in-memory bus"),
			&cli.BoolFlag{Name: "compare", Usage: "also run the bare-Redis reference and print ratios"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the run to this file (go tool pprof)"},
			&cli.StringFlag{Name: "memprofile", Usage: "write an allocation profile of the run to this file (go tool pprof -sample_index=alloc_space)"},
		},
		Action: func(c *cli.Context) error {
			switch c.String("mode") {
			case "scale-replica": // one replica process of --mode scale
				return bench.ServeScaleReplica(c.String("redis"))
			case "scale":
				return runScale(c)
			case "local":
				return runLocal(c)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			o := bench.Options{
				Mode: c.String("mode"), Replicas: c.Int("replicas"), Concurrency: c.Int("concurrency"),
				Duration: c.Duration("duration"), Sequential: c.Int("n"), RedisURL: c.String("redis"),
			}
			if path := c.String("cpuprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			r, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			if path := c.String("memprofile"); path != "" {
				if err := writeHeapProfile(path); err != nil {
					return err
				}
			}
			fmt.Fprintln(c.App.Writer, r)
			if !c.Bool("compare") || (o.Mode != "call" && o.Mode != "send") {
				return nil
			}
			if o.RedisURL == "" {
				return cli.Exit("--compare needs --redis", 2)
			}
			o.Mode = "raw-" + o.Mode
			raw, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, raw)
			fmt.Fprintln(c.App.Writer, bench.Ratio(r, raw))
			return nil
		},
	}
}

func runScale(c *cli.Context) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	o := bench.ScaleOptions{
		Work: c.String("work"), Counts: c.IntSlice("counts"), RedisURL: c.String("redis"), Out: c.App.Writer,
	}
	if c.IsSet("concurrency") {
		o.Concurrency = c.Int("concurrency")
	}
	if c.IsSet("duration") {
		o.Duration = c.Duration("duration")
	}
	o.Rounds = c.Int("rounds")
	_, err := bench.RunScale(ctx, o)
	return err
}

// writeHeapProfile writes the allocations of the run so far (the
// profile's alloc_space and alloc_objects samples).
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// runLocal is --mode local: the co-located path against a direct call and
// the in-memory bus, in one run.
func runLocal(c *cli.Context) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	o := bench.Options{Concurrency: c.Int("concurrency"), Duration: c.Duration("duration"), Sequential: c.Int("n")}
	rounds, med, err := bench.RunLocal(ctx, o, c.Int("rounds"))
	if err != nil {
		return err
	}
	for _, r := range rounds {
		fmt.Fprintln(c.App.Writer, r)
	}
	if len(rounds) > 1 {
		fmt.Fprintln(c.App.Writer, bench.MedianLine(len(rounds), med))
	}
	return nil
}
