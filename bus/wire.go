package bus

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// wireConn is a connection to one Redis server (or to the master
// Sentinel names) on which the bus writes commands as RESP and reads
// their replies itself: the combiner's (writeBatch, readBatch) and each
// blocking reader's (exchange). Through go-redis a pipelined XADD cost a command
// object, a boxed value per argument, its pipeline's hooks and a parsed
// reply nobody reads, and a raw stream read a growing buffer: together
// about 65 of a call's 110 allocations, and a quarter of its CPU time.
// Here a command is encoded once, by the goroutine that makes it
// (respCmd); the combiner reads only each reply's error, a reader each
// reply into one buffer of its size.
//
// go-redis still dials and sets the connection up (TLS, AUTH, SELECT,
// Sentinel's master): a client of one connection of its own dials it,
// checks it out for good, and hands the net.Conn over.
type wireConn struct {
	client *redis.Client // the client that dialled nc; closed with it
	held   *redis.Conn   // keeps nc checked out, so go-redis never uses it
	nc     net.Conn
	r      *bufio.Reader
	w      *bufio.Writer

	readTimeout, writeTimeout time.Duration
	readBy, writeBy           time.Time // the deadlines set on nc

	closeOnce sync.Once
}

type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// wireDialer makes wireConns: inner dials a connection; newClient returns
// a client of one connection that dials through the dialer it is given.
type wireDialer struct {
	inner     dialFunc
	newClient func(dial dialFunc) *redis.Client
}

// newWireDialer returns how the combiner of r dials, or nil if it must go
// through go-redis: a cluster (its commands go to the node of their key)
// or a client passed in whose options cannot make another (a Sentinel
// client, an unknown kind).
func (r *Redis) newWireDialer() *wireDialer {
	c, ok := r.rdb.(*redis.Client)
	switch {
	case !ok:
		return nil
	case r.failover != nil:
		fo := *r.failover
		fo.DialTimeout, fo.ReadTimeout, fo.WriteTimeout = boundTimeout(fo.DialTimeout), boundTimeout(fo.ReadTimeout), boundTimeout(fo.WriteTimeout)
		return failoverWireDialer(fo)
	case c.Options().Addr == "FailoverClient":
		return nil
	}
	opt := *c.Options()
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = boundTimeout(opt.DialTimeout), boundTimeout(opt.ReadTimeout), boundTimeout(opt.WriteTimeout)
	return singleWireDialer(opt)
}

// combinerTimeout bounds the combiner's dial and each of its round trips
// (below a client's own, longer, timeouts): when Redis hangs or is gone,
// calls and sends fail with unavailable within about a second, so callers
// can back off, instead of waiting out their deadline.
const combinerTimeout = time.Second

// boundTimeout is a timeout no longer than combinerTimeout; a negative one
// (none) is kept.
func boundTimeout(d time.Duration) time.Duration {
	if d == 0 || d > combinerTimeout {
		return combinerTimeout
	}
	return d
}

// singleWireDialer dials as a client with options opt would, opt taken
// from a client (so initialised: its Dialer is set).
func singleWireDialer(opt redis.Options) *wireDialer {
	return &wireDialer{inner: opt.Dialer, newClient: func(dial dialFunc) *redis.Client {
		o := opt
		o.Dialer = dial
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.Protocol = 1, 0, 1, 2
		return redis.NewClient(&o)
	}}
}

// failoverWireDialer dials the master the sentinels of fo name.
func failoverWireDialer(fo redis.FailoverOptions) *wireDialer {
	inner := fo.Dialer
	if inner == nil {
		// What go-redis dials the master with when no dialer is set.
		inner = redis.NewDialer(&redis.Options{DialTimeout: cmp.Or(fo.DialTimeout, 5*time.Second), TLSConfig: fo.TLSConfig})
	}
	return &wireDialer{inner: inner, newClient: func(dial dialFunc) *redis.Client {
		o := fo
		o.Dialer = dial
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.Protocol = 1, 0, 1, 2
		return redis.NewFailoverClient(&o)
	}}
}

// dial opens a wireConn: a client of one connection dials and sets it up
// (its PING proves it works), and keeps it checked out.
func (d *wireDialer) dial(ctx context.Context) (*wireConn, error) {
	var mu sync.Mutex
	var got net.Conn
	client := d.newClient(func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := d.inner(ctx, network, addr)
		if err == nil {
			mu.Lock()
			got = nc
			mu.Unlock()
		}
		return nc, err
	})
	held := client.Conn()
	if err := held.Ping(ctx).Err(); err != nil {
		held.Close()
		client.Close()
		return nil, err
	}
	mu.Lock()
	nc := got
	mu.Unlock()
	if nc == nil {
		held.Close()
		client.Close()
		return nil, errors.New("bus: the combiner's connection was not dialled")
	}
	opt := client.Options()
	return &wireConn{
		client: client, held: held, nc: nc,
		r: bufio.NewReaderSize(nc, 32<<10), w: bufio.NewWriterSize(nc, 32<<10),
		readTimeout: opt.ReadTimeout, writeTimeout: opt.WriteTimeout,
	}, nil
}

// close closes the connection; a reader's may be closed twice (by Close,
// to end a read in progress, and by its read loop).
func (w *wireConn) close() {
	w.closeOnce.Do(func() {
		w.nc.Close()
		w.held.Close()
		w.client.Close()
	})
}

// deadline sets a deadline on nc only when the one set is nearer than
// half the timeout: a timer change per round trip is not free.
func deadline(set func(time.Time) error, by *time.Time, timeout time.Duration) error {
	if timeout <= 0 {
		return nil
	}
	now := time.Now()
	if by.Sub(now) > timeout/2 {
		return nil
	}
	*by = now.Add(timeout)
	return set(*by)
}

// writeBatch writes the batch's commands and then its acks.
func (w *wireConn) writeBatch(b *batch) error {
	if err := deadline(w.nc.SetWriteDeadline, &w.writeBy, w.writeTimeout); err != nil {
		return err
	}
	for _, p := range b.cmds {
		w.w.Write(p.cmd.bytes())
	}
	for i := range b.acks {
		w.w.Write(b.acks[i].bytes())
	}
	return w.w.Flush()
}

// readBatch reads a reply for each of the batch's commands and acks: a
// command's server error goes to its pendingCmd; a failure of the
// connection is returned (and given to every command whose reply was not
// read).
func (w *wireConn) readBatch(b *batch) error {
	if err := deadline(w.nc.SetReadDeadline, &w.readBy, w.readTimeout); err != nil {
		b.fail(err)
		return err
	}
	for i, p := range b.cmds {
		replyErr, err := readReplyErr(w.r)
		if err != nil {
			for _, q := range b.cmds[i:] {
				q.err = err
			}
			return err
		}
		p.err = replyErr
	}
	for range b.acks {
		// An ack's failure (NOGROUP: the stream was deleted) leaves its
		// entry pending, which is all an ack can do.
		if _, err := readReplyErr(w.r); err != nil {
			return err
		}
	}
	return nil
}

// exchange writes one command and reads its whole reply, for a reader
// connection, which has one command in flight at a time. A bulk string
// longer than maxField is cut short (readRawReplyMax).
func (w *wireConn) exchange(cmd []byte, maxField int) ([]byte, error) {
	if err := deadline(w.nc.SetWriteDeadline, &w.writeBy, w.writeTimeout); err != nil {
		return nil, err
	}
	w.w.Write(cmd)
	if err := w.w.Flush(); err != nil {
		return nil, err
	}
	if err := deadline(w.nc.SetReadDeadline, &w.readBy, w.readTimeout); err != nil {
		return nil, err
	}
	return readRawReplyMax(w.r, maxField)
}
