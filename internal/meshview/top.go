package meshview

import (
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/fnmesh/fnmesh/registry"
)

// Top turns successive registry reads into rates and latencies: each
// replica's heartbeat carries cumulative per-function counters and a
// latency histogram (registry.FunctionStats); the difference between two
// reads, summed over replicas, gives the calls, errors and latency
// distribution of the interval.
type Top struct {
	prev     map[replicaFn]registry.FunctionStats
	prevReps map[[2]string]bool // service, replica seen in the previous read
	prevAt   time.Time
}

type replicaFn struct{ service, replica, function string }

// Row is one function in a frame.
type Row struct {
	Service, Function string
	Rate              float64 // finished runs per second
	ErrorRate         float64 // share of runs that failed, 0 to 1
	P50, P99          float64 // seconds; NaN with no runs
	InFlight          int64
}

// Frame is one screen of top.
type Frame struct {
	At       time.Time
	Interval time.Duration
	Services []Service
	Rows     map[string][]Row // by service
}

// Sample reads the registry and returns the frame for the interval since
// the previous Sample (the first has no rates).
func (t *Top) Sample(ctx context.Context, store registry.Store) (Frame, error) {
	services, err := Read(ctx, store)
	if err != nil {
		return Frame{}, err
	}
	return t.Next(services, time.Now()), nil
}

// Next computes a frame from services read at now.
func (t *Top) Next(services []Service, now time.Time) Frame {
	f := Frame{At: now, Services: services, Rows: map[string][]Row{}}
	cur := map[replicaFn]registry.FunctionStats{}
	curReps := map[[2]string]bool{}
	if !t.prevAt.IsZero() {
		f.Interval = now.Sub(t.prevAt)
	}
	for _, s := range services {
		rows := map[string]*Row{}
		deltas := map[string]*registry.FunctionStats{}
		for _, name := range s.View.Functions() {
			rows[name] = &Row{Service: s.View.Name, Function: name, P50: math.NaN(), P99: math.NaN()}
			deltas[name] = &registry.FunctionStats{}
		}
		for _, r := range s.View.Replicas {
			curReps[[2]string{s.View.Name, r.ID}] = true
			for fn, st := range r.Stats.Functions {
				k := replicaFn{s.View.Name, r.ID, fn}
				cur[k] = st
				row, d := rows[fn], deltas[fn]
				if row == nil {
					continue
				}
				row.InFlight += st.InFlight
				prev, seen := t.prev[k]
				if !seen {
					// Counting from zero is right when the replica was read
					// before (its first call of fn came since) or started
					// since; otherwise there is no base to subtract from.
					if t.prevAt.IsZero() || (!t.prevReps[[2]string{s.View.Name, r.ID}] && r.StartedAt.Before(t.prevAt)) {
						continue
					}
					prev = registry.FunctionStats{}
				}
				if st.Calls < prev.Calls { // a replica restarted under the same id
					prev = registry.FunctionStats{}
				}
				d.Calls += st.Calls - prev.Calls
				d.Errors += st.Errors - min(prev.Errors, st.Errors)
				if len(d.Latency) < len(st.Latency) {
					d.Latency = append(d.Latency, make([]uint64, len(st.Latency)-len(d.Latency))...)
				}
				for i, n := range st.Latency {
					var p uint64
					if i < len(prev.Latency) {
						p = prev.Latency[i]
					}
					if n >= p {
						d.Latency[i] += n - p
					}
				}
			}
		}
		for name, row := range rows {
			d := deltas[name]
			if f.Interval > 0 {
				row.Rate = float64(d.Calls) / f.Interval.Seconds()
			}
			if d.Calls > 0 {
				row.ErrorRate = float64(d.Errors) / float64(d.Calls)
				row.P50 = Quantile(0.5, d.Latency)
				row.P99 = Quantile(0.99, d.Latency)
			}
		}
		list := make([]Row, 0, len(rows))
		for _, r := range rows {
			list = append(list, *r)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Function < list[j].Function })
		f.Rows[s.View.Name] = list
	}
	t.prev, t.prevReps, t.prevAt = cur, curReps, now
	return f
}

// Quantile estimates the q-quantile (0..1) of the durations counted in
// buckets (per-bucket counts for registry.LatencyBounds, the last one
// unbounded), interpolating linearly within a bucket as Prometheus'
// histogram_quantile does. Runs past the last bound report that bound.
func Quantile(q float64, buckets []uint64) float64 {
	var total uint64
	for _, n := range buckets {
		total += n
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	var cum float64
	bounds := registry.LatencyBounds
	for i, n := range buckets {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			if i >= len(bounds) {
				return bounds[len(bounds)-1]
			}
			lower := 0.0
			if i > 0 {
				lower = bounds[i-1]
			}
			return lower + (bounds[i]-lower)*(rank-cum)/float64(n)
		}
		cum += float64(n)
	}
	return bounds[len(bounds)-1]
}

// Render writes f for an 80-column terminal.
func Render(w io.Writer, f Frame) {
	replicas := 0
	for _, s := range f.Services {
		replicas += len(s.View.Replicas)
	}
	head := fmt.Sprintf("fnmesh top  %s  %d %s, %d %s", f.At.Format("15:04:05"), len(f.Services), plural(len(f.Services), "service"), replicas, plural(replicas, "replica"))
	if f.Interval == 0 {
		head += "  (rates from the next refresh)"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintf(w, "%-30s %8s %6s %8s %8s %5s\n", "FUNCTION", "CALLS/S", "ERR%", "P50", "P99", "RUN")
	for _, s := range f.Services {
		q := s.Queue
		line := fmt.Sprintf("%s  %d %s  backlog %d  pending %d  dead %d", s.View.Name, len(s.View.Replicas), plural(len(s.View.Replicas), "replica"), q.Backlog, q.Pending, q.DeadLetters)
		if len(s.Conflicts) > 0 {
			line += "  ! breaking"
		}
		fmt.Fprintln(w, trunc(line, 79))
		for _, r := range f.Rows[s.View.Name] {
			rate, errs := "-", "-"
			if f.Interval > 0 {
				rate = fmt.Sprintf("%.1f", r.Rate)
				if r.Rate > 0 {
					errs = fmt.Sprintf("%.1f", 100*r.ErrorRate)
				}
			}
			fmt.Fprintf(w, "  %-28s %8s %6s %8s %8s %5d\n", trunc(r.Function, 28), rate, errs, dur(r.P50), dur(r.P99), r.InFlight)
		}
	}
}

func dur(s float64) string {
	switch {
	case math.IsNaN(s):
		return "-"
	case s < 0.001:
		return fmt.Sprintf("%.0fus", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.1fms", s*1e3)
	}
	return fmt.Sprintf("%.2fs", s)
}

// Clear is the ANSI sequence that homes the cursor and clears the screen.
const Clear = "\x1b[H\x1b[2J"

// Lines returns the longest line of s, for width checks.
func Lines(s string) (longest int) {
	for _, l := range strings.Split(s, "\n") {
		longest = max(longest, len([]rune(l)))
	}
	return longest
}
