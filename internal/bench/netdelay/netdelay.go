// Package netdelay is a TCP proxy that delays every byte by a fixed time
// in each direction, to measure the mesh against a Redis a network hop
// away: with a one-way delay d, a round trip through the proxy takes 2d
// more than through loopback, as on a link of that latency (bandwidth is
// not limited).
//
//	p, err := netdelay.Start("127.0.0.1:6379", 250*time.Microsecond)
//	// dial p.Addr() instead of 127.0.0.1:6379
package netdelay

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Proxy forwards each connection it accepts to its target.
type Proxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target, delaying
// each chunk of bytes by oneWay in each direction.
func Start(target string, oneWay time.Duration) (*Proxy, error) {
	if oneWay < 0 {
		return nil, errors.New("netdelay: negative delay")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, delay: oneWay, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address to dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Delay is the one-way delay.
func (p *Proxy) Delay() time.Duration { return p.delay }

// Close stops accepting, closes every forwarded connection and waits for
// the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(in)
	}
}

// forward pipes in to a new connection to the target, both ways. When
// either side closes, both do.
func (p *Proxy) forward(in net.Conn) {
	defer p.wg.Done()
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		in.Close()
		return
	}
	if !p.track(in) || !p.track(out) {
		in.Close()
		out.Close()
		return
	}
	var both sync.WaitGroup
	both.Add(2)
	go func() { defer both.Done(); p.pipe(out, in) }()
	go func() { defer both.Done(); p.pipe(in, out) }()
	both.Wait()
	p.untrack(in)
	p.untrack(out)
}

// chunk is bytes read at a time, to be written delay after it.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk delay after it was read. A reader
// and a writer run apart, so bytes keep arriving while earlier ones wait:
// the delay is latency, not a limit on throughput.
func (p *Proxy) pipe(dst, src net.Conn) {
	queue := make(chan chunk, 1024)
	go func() {
		defer close(queue)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				queue <- chunk{b: b[:n], due: time.Now().Add(p.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range queue {
		sleepUntil(c.due)
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	// Unblock the other side and the reader: the connection is over.
	dst.Close()
	src.Close()
	for range queue {
	}
}
