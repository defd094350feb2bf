package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/internal/bench"
)

// benchModes are the values of bench --mode.
var benchModes = []string{"call", "send", "raw-call", "raw-send", "scale", "local"}

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
			"function co-located (in-process through the mesh: on a replica worker, the\n" +
			"default, and on the caller's goroutine, handlers.Inline) without and with an\n" +
			"HS256 token, and over the in-memory bus: p50 of sequential calls, calls/s\n" +
			"with --concurrency in flight, ratios to the bus, and process CPU and\n" +
			"allocations per call.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mode", Value: "call", Usage: strings.Join(benchModes, ", ")},
			&cli.StringFlag{Name: "work", Value: "io", Usage: "scale mode: what the function does, io (waits 20 ms) or cpu (hashes)"},
			&cli.IntSliceFlag{Name: "counts", Value: cli.NewIntSlice(1, 2, 4), Usage: "scale mode: replica processes to measure"},
			&cli.IntFlag{Name: "rounds", Value: 1, Usage: "scale and local modes: measure this many times in turn and print the medians"},
			&cli.IntFlag{Name: "replicas", Value: 2, Usage: "replicas of the function, each with its own connection"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "calls in flight"},
			&cli.DurationFlag{Name: "duration", Value: 3 * time.Second, Usage: "length of the throughput phase"},
			&cli.IntFlag{Name: "n", Value: 2000, Usage: "sequential calls for latency"},
			redisFlag("Redis URL; without it, the in-memory bus"),
			&cli.BoolFlag{Name: "compare", Usage: "also run the bare-Redis reference and print ratios"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object per result (scale: one per replica count)"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the run to this file (go tool pprof)"},
			&cli.StringFlag{Name: "memprofile", Usage: "write an allocation profile of the run to this file (go tool pprof -sample_index=alloc_space)"},
		},
		Action: func(c *cli.Context) error {
			switch mode := c.String("mode"); {
			case mode == "scale-replica": // one replica process of --mode scale
				return bench.ServeScaleReplica(c.String("redis"))
			case mode == "scale":
				return runScale(c)
			case mode == "local":
				return runLocal(c)
			case !slices.Contains(benchModes, mode):
				return cli.Exit(fmt.Sprintf("unknown --mode %q: one of %s", mode, strings.Join(benchModes, ", ")), 2)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			o := bench.Options{
				Mode: c.String("mode"), Replicas: c.Int("replicas"), Concurrency: c.Int("concurrency"),
				Duration: c.Duration("duration"), Sequential: c.Int("n"), RedisURL: c.String("redis"),
			}
			stopProfile, err := startCPUProfile(c.String("cpuprofile"))
			if err != nil {
				return err
			}
			defer stopProfile()
			r, err := bench.Run(ctx, o)
			if err != nil {
				return err
			}
			if path := c.String("memprofile"); path != "" {
				if err := writeHeapProfile(path); err != nil {
					return err
				}
			}
			printResult(c, r)
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
			printResult(c, raw)
			if !c.Bool("json") {
				fmt.Fprintln(c.App.Writer, bench.Ratio(r, raw))
			}
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
	if c.Bool("json") {
		o.Out = io.Discard
	}
	points, err := bench.RunScale(ctx, o)
	if err != nil || !c.Bool("json") {
		return err
	}
	enc := json.NewEncoder(c.App.Writer)
	for _, p := range points {
		enc.Encode(map[string]any{
			"mode": "scale", "work": o.Work, "replicas": p.Replicas, "per_second": p.PerSecond,
			"p50_us": p.P50.Microseconds(), "p99_us": p.P99.Microseconds(), "calls": p.Calls, "failed": p.Failed,
		})
	}
	return nil
}

// printResult prints a bench result as a line of key=value pairs, or of
// JSON with --json.
func printResult(c *cli.Context, r bench.Result) {
	if !c.Bool("json") {
		fmt.Fprintln(c.App.Writer, r)
		return
	}
	json.NewEncoder(c.App.Writer).Encode(map[string]any{
		"mode": r.Mode, "p50_us": r.P50.Microseconds(), "p99_us": r.P99.Microseconds(),
		"per_second": r.PerSecond, "sent_per_second": r.SentPerSec, "calls": r.Calls,
		"cpu_us_per_call":       float64(r.CPUPerCall) / float64(time.Microsecond),
		"redis_cpu_us_per_call": float64(r.RedisCPUPerCall) / float64(time.Microsecond),
	})
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

// startCPUProfile writes a CPU profile to path until stop is called; with
// no path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// runLocal is --mode local: the co-located path against a direct call and
// the in-memory bus, in one run.
func runLocal(c *cli.Context) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	o := bench.Options{Concurrency: c.Int("concurrency"), Duration: c.Duration("duration"), Sequential: c.Int("n")}
	stopProfile, err := startCPUProfile(c.String("cpuprofile"))
	if err != nil {
		return err
	}
	defer stopProfile()
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
