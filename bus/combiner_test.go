package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/bench/netdelay"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/internal/wire"
)

// wireLog records, in order, the writes and the reads that returned
// bytes on the connections it wraps.
type wireLog struct {
	mu     sync.Mutex
	on     bool
	events []byte // 'w' or 'r'
	wrote  chan struct{}
}

func (l *wireLog) add(e byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.on {
		return
	}
	l.events = append(l.events, e)
	if e == 'w' {
		select {
		case l.wrote <- struct{}{}:
		default:
		}
	}
}

func (l *wireLog) start() {
	l.mu.Lock()
	l.on = true
	l.mu.Unlock()
}

func (l *wireLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.events)
}

type loggedConn struct {
	net.Conn
	log *wireLog
}

func (c loggedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.log.add('w')
	return n, err
}

func (c loggedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.log.add('r')
	}
	return n, err
}

// delayedCombiner returns a combiner whose connection goes through a
// proxy adding oneWay each way to a new redis-server, the log of its
// connection's writes and reads, and the server.
func delayedCombiner(t *testing.T, oneWay, readTimeout time.Duration) (*combiner, *wireLog, *redistest.Server) {
	t.Helper()
	srv, err := redistest.Start(redistest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	proxy, err := netdelay.Start(srv.Addr, oneWay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: readTimeout, WriteTimeout: 5 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	log := &wireLog{wrote: make(chan struct{}, 1)}
	d := wire.NewDialer(*rdb.Options())
	d.WrapConns(func(nc net.Conn) net.Conn { return loggedConn{nc, log} })
	c := newCombiner(rdb, d, 0)
	t.Cleanup(c.close)
	return c, log, srv
}

func incr(c *combiner, key string) *pendingCmd {
	p := c.command()
	p.cmd.Arg("incr")
	p.cmd.Arg(key)
	return p
}

// The combiner writes a batch while the replies of the batches before it
// are outstanding: through a link of 200 ms each way, four commands
// queued one after another, each once the one before was written, are
// all written before the first reply is read. A combiner that waits for
// a batch's replies before it writes the next reads a reply between any
// two writes.
func TestCombinerWritesWhileRepliesOutstanding(t *testing.T) {
	c, log, _ := delayedCombiner(t, 200*time.Millisecond, 5*time.Second)
	ctx := context.Background()
	if err := c.do(ctx, incr(c, "n")); err != nil { // dials the connection
		t.Fatal(err)
	}
	log.start()
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- c.do(ctx, incr(c, "n")) }()
		select {
		case <-log.wrote:
		case err := <-errs:
			t.Fatalf("command %d ended before it was written: %v", i, err)
		}
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got := log.String()
	if want := "wwww"; len(got) < n || got[:n] != want {
		t.Fatalf("connection events %q: want %d writes before the first read", got, n)
	}
	rdb := c.rdb
	if v, err := rdb.Get(ctx, "n").Int(); err != nil || v != n+1 {
		t.Fatalf("n = %d (%v), want %d", v, err, n+1)
	}
}

// Far more commands than maxInFlight batches, from many goroutines at
// once, all complete, each with its own outcome.
func TestCombinerManyInFlight(t *testing.T) {
	c, _, _ := delayedCombiner(t, 2*time.Millisecond, 5*time.Second)
	ctx := context.Background()
	const callers, each = 64, 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := c.do(ctx, incr(c, fmt.Sprint("k", g))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for g := 0; g < callers; g++ {
		if v, err := c.rdb.Get(ctx, fmt.Sprint("k", g)).Int(); err != nil || v != each {
			t.Fatalf("k%d = %d (%v), want %d", g, v, err, each)
		}
	}
}

// When the server stops answering with batches in flight, every waiting
// caller gets an error (a timeout, not retried): none waits forever. The
// next command goes out on a new connection.
func TestCombinerServerStopsAnsweringInFlight(t *testing.T) {
	c, log, srv := delayedCombiner(t, time.Millisecond, 500*time.Millisecond)
	ctx := context.Background()
	if err := c.do(ctx, incr(c, "n")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	log.start()
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- c.do(ctx, incr(c, "n")) }()
		<-log.wrote
	}
	for i := 0; i < n; i++ {
		var ne net.Error
		if err := <-errs; !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("command %d: %v, want a timeout", i, err)
		}
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.do(ctx, incr(c, "n")); err != nil {
		t.Fatalf("after the server answers again: %v", err)
	}
}
