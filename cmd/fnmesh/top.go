package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/fnmesh/fnmesh/internal/meshview"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/registry"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top",
		Usage: "live view of every function's rate, error rate, p50/p99 and backlog",
		Description: "Rates and latencies come from the counters replicas publish with their\n" +
			"heartbeat (registry.Config.Stats, e.g. telemetry.Metrics); backlog and\n" +
			"pending from the request streams.\n\n" +
			"On a terminal it redraws the screen; q or Ctrl-C quits. Otherwise (a pipe,\n" +
			"a file) it prints plain frames one after another, or with --json one JSON\n" +
			"object per frame and line.",
		Flags: append([]cli.Flag{
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh period"},
			&cli.BoolFlag{Name: "once", Usage: "print one frame (two reads, an interval apart) and exit"},
			&cli.BoolFlag{Name: "json", Usage: "print each frame as one line of JSON"},
		}, redisflags.Flags("Redis URL (default "+redisflags.Default+")")...),
		Action: func(c *cli.Context) error {
			interval := c.Duration("interval")
			if interval <= 0 {
				return cli.Exit("--interval must be more than 0", 2)
			}
			return withStore(c, func(ctx context.Context, store registry.Store) error {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				w := c.App.Writer
				live := !c.Bool("once") && !c.Bool("json") && isTerminal(w)
				if live {
					if restore, ok := quitOnKey(cancel); ok {
						defer restore()
						w = crlfWriter{w} // raw mode: a newline no longer returns the carriage
					}
				}
				return runTop(ctx, w, store, interval, c.Bool("once"), c.Bool("json"), live)
			})
		},
	}
}

// runTop samples the registry every interval and prints frames: redrawn
// in place when live (a terminal), else one after another.
func runTop(ctx context.Context, w io.Writer, store registry.Store, interval time.Duration, once, asJSON, live bool) error {
	var top meshview.Top
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; ; i++ {
		frame, err := top.Sample(ctx, store)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil && once:
			return err
		case err != nil && asJSON:
			json.NewEncoder(w).Encode(map[string]any{"at": time.Now(), "error": err.Error()})
		case err != nil:
			if live {
				fmt.Fprint(w, meshview.Clear)
			}
			fmt.Fprintf(w, "%s: %v\n", time.Now().Format("15:04:05"), err)
		case once && i == 0:
			// the first sample has no rates yet
		case asJSON:
			if err := json.NewEncoder(w).Encode(frameView(frame)); err != nil {
				return err
			}
			if once {
				return nil
			}
		case once:
			meshview.Render(w, frame)
			return nil
		case live:
			fmt.Fprint(w, meshview.Clear)
			meshview.Render(w, frame)
		default:
			if i > 0 {
				fmt.Fprintln(w)
			}
			meshview.Render(w, frame)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// isTerminal tells whether w is a terminal (not a pipe or a file).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// quitOnKey puts a terminal stdin in raw mode and calls quit when q, Q
// or Ctrl-C is pressed. It returns the function that restores the
// terminal; ok is false when stdin is not a terminal.
func quitOnKey(quit func()) (restore func(), ok bool) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, false
	}
	state, err := term.MakeRaw(fd)
	if err != nil {
		return nil, false
	}
	go func() {
		buf := make([]byte, 1)
		for {
			n, err := os.Stdin.Read(buf)
			if err != nil {
				return
			}
			if n == 1 && (buf[0] == 'q' || buf[0] == 'Q' || buf[0] == 3) {
				quit()
				return
			}
		}
	}()
	return func() { term.Restore(fd, state) }, true
}

// crlfWriter ends lines with CRLF, as a terminal in raw mode needs.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(c.w, strings.ReplaceAll(string(p), "\n", "\r\n")); err != nil {
		return 0, err
	}
	return len(p), nil
}

// topRow is one function of a frame as --json prints it; latencies are
// null with no runs in the interval.
type topRow struct {
	Service   string   `json:"service"`
	Function  string   `json:"function"`
	Rate      float64  `json:"rate_per_s"`
	ErrorRate float64  `json:"error_rate"`
	P50ms     *float64 `json:"p50_ms"`
	P99ms     *float64 `json:"p99_ms"`
	InFlight  int64    `json:"in_flight"`
}

func frameView(f meshview.Frame) map[string]any {
	rows := []topRow{}
	for _, name := range slices.Sorted(maps.Keys(f.Rows)) {
		for _, r := range f.Rows[name] {
			rows = append(rows, topRow{Service: r.Service, Function: r.Function, Rate: r.Rate, ErrorRate: r.ErrorRate,
				P50ms: ms(r.P50), P99ms: ms(r.P99), InFlight: r.InFlight})
		}
	}
	return map[string]any{"at": f.At, "interval_s": f.Interval.Seconds(), "functions": rows}
}

func ms(seconds float64) *float64 {
	if math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		return nil
	}
	v := seconds * 1000
	return &v
}
