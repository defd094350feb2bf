// Command wirecompare measures the call path on our own RESP and on
// rueidis, next to fnmesh's whole call path and ../shared/peers rawpipe,
// on loopback and through a proxy that delays each direction
// (internal/bench/netdelay). Rounds alternate the four, and it prints
// the medians as a Markdown table, ratios to rawpipe from the same round.
//
//	go run ./internal/redistest/withredis -- go run ./internal/bench/wirecompare
//
// The rows:
//   - fnmesh call: client.Call to a handlers.Service replica (bench.Run);
//   - bus, own RESP: the same entries through bus.Redis alone;
//   - bus on rueidis: the same entries through internal/bench/rueproto,
//     with rueidis's defaults and with a MaxFlushDelay of 20µs;
//   - peers rawpipe: the bare loop on rueidis, a process of its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fnmesh/fnmesh/internal/bench"
	"github.com/fnmesh/fnmesh/internal/bench/netdelay"
)

var (
	redisURL = flag.String("redis", os.Getenv("REDIS_URL"), "Redis URL")
	peers    = flag.String("peers", "../shared/peers", "directory of the peers harness ('' to skip rawpipe)")
	rounds   = flag.Int("rounds", 3, "alternating rounds")
	dur      = flag.Duration("d", 2*time.Second, "duration of each throughput phase")
	delays   = flag.String("delays", "0,250us,1ms", "one-way delays to measure at (0: loopback)")
)

var paths = []string{"fnmesh call", "bus, own RESP", "bus on rueidis", "bus on rueidis, 20µs flush", "peers rawpipe"}

// sample is one measurement; cpu and allocs are 0 where not measured.
type sample struct {
	round                                 int
	perSec, p50us, cpuUS, redisUS, allocs float64
}

func main() {
	// A proxy runs in a process of its own, so that the CPU it spends is
	// not counted as the measured process's.
	netdelay.ServeIfChild()
	flag.Parse()
	if *redisURL == "" {
		fmt.Fprintln(os.Stderr, "wirecompare: set REDIS_URL or --redis")
		os.Exit(2)
	}
	target, err := url.Parse(*redisURL)
	if err != nil {
		fail(err)
	}
	var oneWays []time.Duration
	for _, s := range strings.Split(*delays, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			fail(err)
		}
		oneWays = append(oneWays, d)
	}
	peersBin := ""
	if *peers != "" {
		peersBin = filepath.Join(os.TempDir(), fmt.Sprintf("wirecompare-peers-%d", os.Getpid()))
		build := exec.Command("go", "build", "-o", peersBin, ".")
		build.Dir, build.Stderr = *peers, os.Stderr
		if err := build.Run(); err != nil {
			fail(fmt.Errorf("build peers: %w", err))
		}
		defer os.Remove(peersBin)
	}
	load0 := bench.LoadAvg()
	ctx := context.Background()
	// samples[delay][path] over rounds, and the ratios to that round's rawpipe
	samples := make([]map[string][]sample, len(oneWays))
	for i := range samples {
		samples[i] = map[string][]sample{}
	}
	urls := make([]url.URL, len(oneWays)) // Redis, or a proxy in front of it
	for i, d := range oneWays {
		urls[i] = *target
		if d > 0 {
			addr, stop, err := netdelay.StartProcess(target.Host, d)
			if err != nil {
				fail(err)
			}
			defer stop()
			urls[i].Host = addr
		}
	}
	for round := 0; round < *rounds; round++ {
		for di, d := range oneWays {
			u, n := urls[di], sequential(d)
			for k := range paths {
				path := paths[(k+round)%len(paths)] // alternate who goes first
				s, err := measure(ctx, path, u, n, peersBin)
				if err != nil { // one failed run on a busy machine leaves the rest
					fmt.Fprintf(os.Stderr, "round %d delay %v %s: %v\n", round+1, d, path, err)
					continue
				}
				s.round = round
				samples[di][path] = append(samples[di][path], s)
				fmt.Printf("round %d delay %v %-26s calls/s=%.0f p50_us=%.0f cpu_us=%.1f redis_cpu_us=%.1f allocs=%.1f\n",
					round+1, d, path, s.perSec, s.p50us, s.cpuUS, s.redisUS, s.allocs)
			}
		}
	}
	fmt.Printf("\nload average before %s, after %s; %d rounds of %v at 64 in flight\n\n", load0, bench.LoadAvg(), *rounds, *dur)
	fmt.Println("| one-way delay | path | calls/s | vs rawpipe | p50 µs | p50 vs rawpipe | CPU µs/call | Redis CPU µs/call | allocs/call |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for di, d := range oneWays {
		raw := map[int]sample{} // by round
		for _, s := range samples[di]["peers rawpipe"] {
			raw[s.round] = s
		}
		for _, path := range paths {
			ss := samples[di][path]
			if len(ss) == 0 {
				continue
			}
			var tput, p50, cpu, rcpu, allocs, rt, rp []float64
			for _, s := range ss {
				tput, p50 = append(tput, s.perSec), append(p50, s.p50us)
				cpu, rcpu, allocs = append(cpu, s.cpuUS), append(rcpu, s.redisUS), append(allocs, s.allocs)
				if r, ok := raw[s.round]; ok {
					rt, rp = append(rt, s.perSec/r.perSec), append(rp, s.p50us/r.p50us)
				}
			}
			dash := func(v float64, f string) string {
				if v == 0 {
					return "–"
				}
				return fmt.Sprintf(f, v)
			}
			name := "loopback"
			if d > 0 {
				name = d.String()
			}
			fmt.Printf("| %s | %s | %.0f | %s | %.0f | %s | %s | %s | %s |\n", name, path, bench.Median(tput),
				dash(bench.Median(rt), "%.2fx"), bench.Median(p50), dash(bench.Median(rp), "%.2fx"),
				dash(bench.Median(cpu), "%.1f"), dash(bench.Median(rcpu), "%.1f"), dash(bench.Median(allocs), "%.1f"))
		}
	}
}

// sequential is how many sequential calls measure latency at one-way
// delay d: about a second's worth (a call is about four one-way trips).
func sequential(d time.Duration) int {
	if d == 0 {
		return 2000
	}
	return max(200, min(2000, int(time.Second/(4*d))))
}

// measure runs one path once; with no peers harness, rawpipe is skipped.
func measure(ctx context.Context, path string, u url.URL, n int, peersBin string) (sample, error) {
	o := bench.Options{Replicas: 2, Concurrency: 64, Duration: *dur, Sequential: n, RedisURL: u.String()}
	var r bench.Result
	var err error
	switch path {
	case "fnmesh call":
		o.Mode = "call"
		r, err = bench.Run(ctx, o)
	case "bus, own RESP":
		o.Mode = "bus-call"
		r, err = bench.RunTransport(ctx, o)
	case "bus on rueidis":
		o.Mode = "rueidis-call"
		r, err = bench.RunTransport(ctx, o)
	case "bus on rueidis, 20µs flush":
		o.Mode = "rueidis-flush-call"
		r, err = bench.RunTransport(ctx, o)
	case "peers rawpipe":
		if peersBin == "" {
			return sample{}, errors.New("skipped: no peers harness")
		}
		return rawpipe(peersBin, u.Host, n)
	}
	if err != nil {
		return sample{}, err
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	return sample{perSec: r.PerSecond, p50us: us(r.P50), cpuUS: us(r.CPUPerCall), redisUS: us(r.RedisCPUPerCall), allocs: r.AllocsPerCall}, nil
}

var (
	reP50  = regexp.MustCompile(`p50_us=(\d+)`)
	reTput = regexp.MustCompile(`throughput_per_s=(\d+)`)
)

// rawpipe runs peers -mode rawpipe; its CPU and allocations are its own
// process's and are not reported.
func rawpipe(bin, addr string, n int) (sample, error) {
	cmd := exec.Command(bin, "-mode", "rawpipe", "-redis", addr, "-d", dur.String(), "-n", strconv.Itoa(n), "-c", "64")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return sample{}, fmt.Errorf("peers rawpipe: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var s sample
	if m := reP50.FindSubmatch(out); m != nil {
		s.p50us, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := reTput.FindSubmatch(out); m != nil {
		s.perSec, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if s.perSec == 0 {
		return s, fmt.Errorf("peers rawpipe: no throughput in %q", out)
	}
	return s, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "wirecompare:", err)
	os.Exit(1)
}
