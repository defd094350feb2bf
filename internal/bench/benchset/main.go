// Command benchset measures fnmesh against the bare Redis loops of
// ../shared/peers in one session, against one Redis, at three distances:
// loopback, and through a proxy that delays every byte 0.25 ms and 1 ms
// each way (0.5 ms and 2 ms round trip, internal/bench/netdelay). At each
// distance it alternates fnmesh and peers runs for a number of rounds and
// prints, per distance, the median of each ratio:
//
//   - calls/s at 64 in flight, fnmesh call vs peers rawpipe (rueidis,
//     auto-pipelined);
//   - processed sends/s, fnmesh send vs peers rawsend, and the same with
//     the status records of sends turned off (peers keeps none);
//   - sequential p50, fnmesh call vs peers raw (go-redis, one call at a
//     time).
//
// The proxy runs in a process of its own (this command, re-run with
// netdelay.StartProcess), so that its CPU time is neither fnmesh's nor the peers'.
//
//	go run ./internal/redistest/withredis -- go run ./internal/bench/benchset
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
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/bench"
	"github.com/fnmesh/fnmesh/internal/bench/netdelay"
)

func main() {
	netdelay.ServeIfChild()
	redisURL := flag.String("redis", os.Getenv("REDIS_URL"), "Redis URL")
	peers := flag.String("peers", "../shared/peers", "directory of the peers harness")
	dur := flag.Duration("d", 2*time.Second, "duration of each throughput phase")
	rounds := flag.Int("rounds", 3, "rounds of alternating fnmesh and peers runs at each distance")
	seq := flag.Int("n", 300, "sequential calls for the p50")
	delays := flag.String("delays", "0,250us,1ms", "one-way delays to measure at (0: loopback)")
	flag.Parse()
	if *redisURL == "" {
		fatal(errors.New("set REDIS_URL or --redis"))
	}
	opt, err := redis.ParseURL(*redisURL)
	if err != nil {
		fatal(err)
	}
	var ds []time.Duration
	for _, s := range strings.Split(*delays, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			fatal(fmt.Errorf("--delays: %w", err))
		}
		ds = append(ds, d)
	}
	peersBin, cleanup, err := buildPeers(*peers)
	if err != nil {
		fatal(fmt.Errorf("peers harness: %w", err))
	}
	defer cleanup()

	fmt.Printf("load average at start: %s\n", bench.LoadAvg())
	s := set{dur: *dur, seq: *seq, peersBin: peersBin}
	var rows []row
	for _, d := range ds {
		addr, stop, err := proxyFor(opt.Addr, d)
		if err != nil {
			fatal(err)
		}
		r, err := s.distance(d, withAddr(*redisURL, addr), addr, *rounds)
		stop()
		if err != nil {
			fatal(err)
		}
		rows = append(rows, r)
	}
	fmt.Printf("\nload average at end: %s\n\n", bench.LoadAvg())
	fmt.Printf("medians of %d rounds (range); fnmesh and peers alternate, same redis-server\n", *rounds)
	const format = "%-24s %-20s %-20s %-28s %-20s\n"
	fmt.Printf(format, "distance (RTT added)", "calls/s vs rawpipe", "sends/s vs rawsend", "sends/s, no status records", "seq p50 vs raw")
	for _, r := range rows {
		fmt.Printf(format, r.name, r.call, r.send, r.sendNoStatus, r.p50)
	}
	fmt.Printf(format, "goal", ">= 1.00x", ">= 1.00x (loopback)", "", "<= 1.10x (network)")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchset:", err)
	os.Exit(1)
}

type set struct {
	dur      time.Duration
	seq      int
	peersBin string
}

type row struct{ name, call, send, sendNoStatus, p50 string }

// distance runs the rounds at one distance: fnmesh through url, the peers
// through addr.
func (s set) distance(d time.Duration, url, addr string, rounds int) (row, error) {
	name := "loopback"
	if d > 0 {
		name = fmt.Sprintf("%v each way (%v)", d, 2*d)
	}
	fmt.Printf("\n== %s\n", name)
	var call, send, sendNoStatus, p50 []float64
	for i := 0; i < rounds; i++ {
		// Who goes first alternates too: a machine whose speed drifts
		// favours neither.
		var steps []func() error
		var fc, fs, fn bench.Result
		var pp, ps, pr peerResult
		fnCall := func() (err error) {
			fc, err = s.fnmesh("call", url, false)
			return err
		}
		fnSend := func() (err error) {
			if fs, err = s.fnmesh("send", url, false); err != nil {
				return err
			}
			fn, err = s.fnmesh("send", url, true)
			return err
		}
		peer := func(mode string, into *peerResult, dur time.Duration) func() error {
			return func() (err error) {
				*into, err = s.peer(mode, addr, dur)
				return err
			}
		}
		// peers raw is run for its sequential p50; its throughput phase
		// is kept short.
		if i%2 == 0 {
			steps = []func() error{fnCall, peer("rawpipe", &pp, s.dur), fnSend, peer("rawsend", &ps, s.dur), peer("raw", &pr, 500*time.Millisecond)}
		} else {
			steps = []func() error{peer("raw", &pr, 500*time.Millisecond), peer("rawpipe", &pp, s.dur), fnCall, peer("rawsend", &ps, s.dur), fnSend}
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return row{}, err
			}
		}
		call = append(call, fc.PerSecond/pp.perSecond)
		send = append(send, fs.PerSecond/ps.perSecond)
		sendNoStatus = append(sendNoStatus, fn.PerSecond/ps.perSecond)
		p50 = append(p50, float64(fc.P50.Microseconds())/pr.p50)
		fmt.Printf("round %d: calls %.2fx  sends %.2fx (no status records %.2fx)  seq p50 %.2fx\n", i+1, call[i], send[i], sendNoStatus[i], p50[i])
	}
	return row{name: name, call: medianRange(call), send: medianRange(send), sendNoStatus: medianRange(sendNoStatus), p50: medianRange(p50)}, nil
}

// medianRange is the median of v with its range, as a ratio.
func medianRange(v []float64) string {
	sort.Float64s(v)
	return fmt.Sprintf("%.2fx (%.2f-%.2f)", bench.Median(v), v[0], v[len(v)-1])
}

func (s set) fnmesh(mode, url string, noStatus bool) (bench.Result, error) {
	r, err := bench.Run(context.Background(), bench.Options{Mode: mode, Replicas: 2, Concurrency: 64, Duration: s.dur, Sequential: s.seq, RedisURL: url, NoStatus: noStatus})
	if err != nil {
		return r, fmt.Errorf("fnmesh %s: %w", mode, err)
	}
	name := "fnmesh " + mode + ":"
	if noStatus {
		name = "fnmesh " + mode + " (no status):"
	}
	fmt.Printf("  %-26s %s\n", name, r)
	return r, nil
}

type peerResult struct {
	line      string
	p50       float64 // microseconds
	perSecond float64 // calls, or processed sends
}

var (
	reP50  = regexp.MustCompile(`p50_us=(\d+)`)
	reTput = regexp.MustCompile(`(?:throughput_per_s|processed_per_s)=(\d+)`)
)

func (s set) peer(mode, addr string, d time.Duration) (peerResult, error) {
	cmd := exec.Command(s.peersBin, "-mode", mode, "-redis", addr, "-d", d.String(), "-n", strconv.Itoa(s.seq))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return peerResult{}, fmt.Errorf("peers -mode %s: %w", mode, err)
	}
	line := strings.TrimSpace(string(out))
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	p := peerResult{line: line}
	if m := reP50.FindStringSubmatch(line); m != nil {
		p.p50, _ = strconv.ParseFloat(m[1], 64)
	}
	m := reTput.FindStringSubmatch(line)
	if m == nil {
		return p, fmt.Errorf("peers -mode %s: no figure in %q", mode, line)
	}
	p.perSecond, _ = strconv.ParseFloat(m[1], 64)
	fmt.Printf("  %-26s %s\n", "peers "+mode+":", line)
	return p, nil
}

// buildPeers builds the peers harness once, so that no run pays for go run.
func buildPeers(dir string) (string, func(), error) {
	tmp, err := os.MkdirTemp("", "benchset")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(tmp, "peers")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	return bin, func() { os.RemoveAll(tmp) }, nil
}

// proxyFor returns the address to reach target at one-way delay d: target
// itself for 0, else a proxy's in a process of its own.
func proxyFor(target string, d time.Duration) (string, func(), error) {
	if d == 0 {
		return target, func() {}, nil
	}
	return netdelay.StartProcess(target, d)
}

// withAddr is the Redis URL u with its host and port replaced by addr.
func withAddr(u, addr string) string {
	p, err := url.Parse(u)
	if err != nil {
		fatal(err)
	}
	p.Host = addr
	return p.String()
}
