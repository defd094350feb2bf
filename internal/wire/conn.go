package wire

import (
	"bufio"
	"cmp"
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Conn is a connection to one Redis server (or to the master
// Sentinel names) on which the bus writes commands as RESP and reads
// their replies itself: the combiner's (Queue, Flush, ReadReplyErr) and
// each blocking reader's (Exchange). Through go-redis a pipelined XADD cost a command
// object, a boxed value per argument, its pipeline's hooks and a parsed
// reply nobody reads, and a raw stream read a growing buffer: together
// about 65 of a call's 110 allocations, and a quarter of its CPU time.
// Here a command is encoded once, by the goroutine that makes it
// (Cmd); the combiner reads only each reply's error, a reader each
// reply into one buffer of its size.
//
// It dials and sets the connection up itself, from the go-redis options
// the bus was given: go-redis's dialer (TCP, TLS), then AUTH, SELECT,
// CLIENT SETNAME and CLIENT ID (which CLIENT UNBLOCK needs), all in one
// round trip; a Sentinel master's address comes from the sentinels
// (Sentinels). A client whose set-up it cannot repeat (an OnConnect hook,
// streaming credentials) goes through go-redis instead.
type Conn struct {
	nc net.Conn
	r  *bufio.Reader
	w  *bufio.Writer
	id int64 // CLIENT ID

	addr    string // the server's address
	release func() // told when it is closed, once

	readTimeout, writeTimeout time.Duration
	readBy, writeBy           time.Time // the deadlines set on nc

	closeOnce sync.Once
}

type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// Dialer makes Conns to one server, or to the master a set of
// sentinels names.
type Dialer struct {
	dial1       dialFunc                                          // TCP and TLS
	addr        string                                            // where to dial
	credentials func(ctx context.Context) (string, string, error) // user, password; nil: none
	db          int
	name        string
	dialTimeout time.Duration

	readTimeout, writeTimeout time.Duration

	// sentinels, when set, name the address to dial, and close the
	// connection when they name another master (NewFailoverDialer).
	sentinels *Sentinels
}

// WrapConns makes every connection d dials go through wrap (a test logs
// or delays what crosses it).
func (d *Dialer) WrapConns(wrap func(net.Conn) net.Conn) {
	inner := d.dial1
	d.dial1 = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := inner(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(nc), nil
	}
}

// NewDialer dials as a client with options opt would, opt taken
// from a client (so initialised: its Dialer is set); nil if it cannot
// repeat the client's set-up (an OnConnect hook, streaming credentials).
func NewDialer(opt redis.Options) *Dialer {
	if opt.OnConnect != nil || opt.StreamingCredentialsProvider != nil || opt.Dialer == nil {
		return nil
	}
	d := &Dialer{
		dial1: opt.Dialer, addr: opt.Addr, db: opt.DB, name: opt.ClientName, dialTimeout: cmp.Or(opt.DialTimeout, 5*time.Second),
		readTimeout: opt.ReadTimeout, writeTimeout: opt.WriteTimeout,
	}
	d.credentials = credentialsOf(opt.Username, opt.Password, opt.CredentialsProvider, opt.CredentialsProviderContext)
	return d
}

// credentialsOf returns what to AUTH with, as go-redis would choose it;
// nil when there is nothing to send.
func credentialsOf(user, pass string, p func() (string, string), pc func(context.Context) (string, string, error)) func(context.Context) (string, string, error) {
	switch {
	case pc != nil:
		return pc
	case p != nil:
		return func(context.Context) (string, string, error) { u, pw := p(); return u, pw, nil }
	case pass != "":
		return func(context.Context) (string, string, error) { return user, pass, nil }
	}
	return nil
}

// dial opens a Conn and sets it up in one round trip: AUTH, SELECT,
// CLIENT SETNAME, CLIENT ID.
func (d *Dialer) Dial(ctx context.Context) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.dialTimeout)
	defer cancel()
	addr, epoch := d.addr, uint64(0)
	if d.sentinels != nil {
		var err error
		if addr, epoch, err = d.sentinels.masterAddr(ctx); err != nil {
			return nil, err
		}
	}
	nc, err := d.dial1(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	w := &Conn{nc: nc, r: bufio.NewReaderSize(nc, 32<<10), w: bufio.NewWriterSize(nc, 32<<10),
		addr: addr, readTimeout: d.readTimeout, writeTimeout: d.writeTimeout}
	if err := d.setUp(ctx, w); err != nil {
		nc.Close()
		return nil, err
	}
	if d.sentinels != nil && !d.sentinels.track(w, epoch) {
		w.Close()
		return nil, errMasterSwitched
	}
	return w, nil
}

func (d *Dialer) setUp(ctx context.Context, w *Conn) error {
	var cmds []Cmd
	add := func(args ...string) {
		var c Cmd
		c.Reset()
		for _, a := range args {
			c.Arg(a)
		}
		cmds = append(cmds, c)
	}
	if d.credentials != nil {
		user, pass, err := d.credentials(ctx)
		if err != nil {
			return err
		}
		if user != "" {
			add("AUTH", user, pass)
		} else {
			add("AUTH", pass)
		}
	}
	if d.db != 0 {
		add("SELECT", strconv.Itoa(d.db))
	}
	if d.name != "" {
		add("CLIENT", "SETNAME", d.name)
	}
	add("CLIENT", "ID")
	by, _ := ctx.Deadline()
	w.nc.SetDeadline(by)
	defer w.nc.SetDeadline(time.Time{})
	for i := range cmds {
		w.w.Write(cmds[i].Bytes())
	}
	if err := w.w.Flush(); err != nil {
		return err
	}
	for range cmds {
		raw, err := ReadRawReplyMax(w.r, MaxErrorLen)
		if err != nil {
			return err
		}
		r := reader{b: raw}
		t, body, err := r.line()
		if err != nil {
			return err
		}
		switch t {
		case '-':
			return ServerError(body)
		case ':': // CLIENT ID, the only integer reply
			w.id, _ = strconv.ParseInt(string(body), 10, 64)
		}
	}
	return nil
}

// Close closes the connection; a reader's may be closed twice (by Close,
// to end a read in progress, and by its read loop).
func (w *Conn) Close() {
	w.closeOnce.Do(func() {
		w.nc.Close()
		if w.release != nil {
			w.release()
		}
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

// Queue adds cmd to what the next Flush writes.
func (w *Conn) Queue(cmd []byte) { w.w.Write(cmd) }

// Flush writes what is queued.
func (w *Conn) Flush() error {
	if err := deadline(w.nc.SetWriteDeadline, &w.writeBy, w.writeTimeout); err != nil {
		return err
	}
	return w.w.Flush()
}

// ReadReplyErr reads the next reply and returns what a pipeline needs of
// it (see ReadReplyErr): replyErr, the server's error or redis.Nil; err,
// a failure of the connection, which is then unusable.
func (w *Conn) ReadReplyErr() (replyErr, err error) {
	if err := deadline(w.nc.SetReadDeadline, &w.readBy, w.readTimeout); err != nil {
		return nil, err
	}
	return ReadReplyErr(w.r)
}

// ID is the connection's CLIENT ID, for CLIENT UNBLOCK.
func (w *Conn) ID() int64 { return w.id }

// Exchange writes one command and reads its whole reply, for a reader
// connection, which has one command in flight at a time. A bulk string
// longer than maxField is cut short (ReadRawReplyMax).
func (w *Conn) Exchange(cmd []byte, maxField int) ([]byte, error) {
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
	return ReadRawReplyMax(w.r, maxField)
}
