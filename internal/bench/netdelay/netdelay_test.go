package netdelay_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/internal/bench/netdelay"
)

func TestMain(m *testing.M) {
	netdelay.ServeIfChild() // the proxy process of TestStartProcess
	os.Exit(m.Run())
}

// dialThrough starts a proxy to an echo server at one-way delay oneWay
// and returns a connection through it.
func dialThrough(t *testing.T, oneWay time.Duration) net.Conn {
	p, err := netdelay.Start(echo(t), oneWay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo serves a line-echo server and returns its address.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func TestRoundTripTakesTwiceTheDelay(t *testing.T) {
	const oneWay = 20 * time.Millisecond
	before := runtime.NumGoroutine()
	p, err := netdelay.Start(echo(t), oneWay)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo: %q %v", line, err)
		}
		if took := time.Since(start); took < 2*oneWay {
			t.Fatalf("round trip took %v, less than twice the one-way delay %v", took, oneWay)
		}
	}
	c.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waited for the proxy's goroutines; the echo server's may still
	// be ending.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Fatalf("%d goroutines after Close, %d before Start", n, before)
	}
}

// Many writes in flight at once, as a pipelining client makes them,
// arrive whole and in order.
func TestPipelinedWritesArriveInOrder(t *testing.T) {
	c := dialThrough(t, 10*time.Millisecond)
	want := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	go func() {
		for off := 0; off < len(want); off += 4096 {
			c.Write(want[off : off+4096])
		}
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes changed or reordered through the proxy")
	}
}

// A sub-millisecond delay stays one: the runtime wakes timers of an idle
// process no sooner than 1 ms, which made 250us each way a round trip
// of 2.5 ms.
func TestSubMillisecondDelay(t *testing.T) {
	const oneWay = 250 * time.Microsecond
	c := dialThrough(t, oneWay)
	r := bufio.NewReader(c)
	lat := make([]time.Duration, 0, 101)
	for range cap(lat) {
		start := time.Now()
		c.Write([]byte("ping\n"))
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	// Generous for a busy machine, and still under the 2 ms that two
	// timer wake-ups of 1 ms give.
	if p50 := lat[len(lat)/2]; p50 < 2*oneWay || p50 > 2*oneWay+time.Millisecond {
		t.Fatalf("median round trip %v with %v each way, want %v to %v", p50, oneWay, 2*oneWay, 2*oneWay+time.Millisecond)
	}
}

// A proxy in a process of its own forwards as one in this process does,
// and ends with stop.
func TestStartProcess(t *testing.T) {
	const oneWay = 5 * time.Millisecond
	addr, stop, err := netdelay.StartProcess(echo(t), oneWay)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.Write([]byte("ping\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("through the proxy process: %q %v", line, err)
	}
	if rtt := time.Since(start); rtt < 2*oneWay {
		t.Fatalf("round trip %v with %v each way", rtt, oneWay)
	}
	stop()
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("the proxy still listens after stop")
	}
}
