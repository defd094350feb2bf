package bus

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/wire"
)

// clusterWire is a cluster worker's own connections, one per master it
// has written to. A batch's commands go to the master of their key's slot
// as the RESP they were encoded in, as on one server: no go-redis command
// per command, no arguments parsed again. Each master gets its commands
// in one write, all masters before any reply is read. A command the
// cluster redirects (MOVED, ASK) or that meets a failed connection runs
// once more through go-redis, which follows the cluster (a command that
// did reach Redis may then run twice, which at-least-once delivery
// allows).
type clusterWire struct {
	cc    *redis.ClusterClient
	conns map[string]*wire.Conn // by node address
}

// clusterItem is one command of a batch on its way to a master.
type clusterItem struct {
	cmd *wire.Cmd
	err *error // its outcome; nil for an ack, whose outcome nobody reads
}

// exec runs b: its commands, then, in a round trip of their own, its acks
// (a reply and the XACK of its request live on different masters, and the
// ack must not go first).
func (w *clusterWire) exec(ctx context.Context, b *batch) {
	items := make([]clusterItem, 0, max(len(b.cmds), len(b.acks)))
	for _, p := range b.cmds {
		items = append(items, clusterItem{&p.cmd, &p.err})
	}
	w.run(ctx, items)
	items = items[:0]
	for i := range b.acks {
		items = append(items, clusterItem{cmd: &b.acks[i]})
	}
	w.run(ctx, items)
}

func (w *clusterWire) run(ctx context.Context, items []clusterItem) {
	if len(items) == 0 {
		return
	}
	type node struct {
		conn  *wire.Conn
		items []clusterItem
	}
	var nodes []*node
	byAddr := map[string]*node{}
	var again []clusterItem
	for _, it := range items {
		conn, addr := w.connFor(ctx, it.cmd)
		if conn == nil {
			again = append(again, it)
			continue
		}
		n := byAddr[addr]
		if n == nil {
			n = &node{conn: conn}
			byAddr[addr] = n
			nodes = append(nodes, n)
		}
		n.items = append(n.items, it)
	}
	written := nodes[:0]
	for _, n := range nodes {
		for _, it := range n.items {
			n.conn.Queue(it.cmd.Bytes())
		}
		if err := n.conn.Flush(); err != nil {
			w.drop(n.conn)
			again = append(again, n.items...)
			continue
		}
		written = append(written, n)
	}
	for _, n := range written {
		for i, it := range n.items {
			replyErr, err := n.conn.ReadReplyErr()
			if err != nil {
				w.drop(n.conn)
				again = append(again, n.items[i:]...)
				break
			}
			if redirected(replyErr) {
				again = append(again, it)
				continue
			}
			if it.err != nil {
				*it.err = replyErr
			}
		}
	}
	if len(again) > 0 {
		w.viaGoRedis(ctx, again)
	}
}

// connFor returns the connection to the master of cmd's key, dialled if
// need be, and its address; nil if the command goes through go-redis (not
// a command on one key, a slot map not known yet, a node whose set-up a
// wire.Conn cannot repeat, or a failed dial).
func (w *clusterWire) connFor(ctx context.Context, cmd *wire.Cmd) (*wire.Conn, string) {
	key := cmd.Stream()
	if key == "" {
		return nil, ""
	}
	node, err := w.cc.MasterForKey(ctx, key)
	if err != nil {
		return nil, ""
	}
	addr := node.Options().Addr
	if conn := w.conns[addr]; conn != nil {
		return conn, addr
	}
	opt := *node.Options()
	boundTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
	d := wire.NewDialer(opt)
	if d == nil {
		return nil, ""
	}
	conn, err := d.Dial(ctx)
	if err != nil {
		w.cc.ReloadState(ctx)
		return nil, ""
	}
	if w.conns == nil {
		w.conns = map[string]*wire.Conn{}
	}
	w.conns[addr] = conn
	return conn, addr
}

// drop closes a failed connection, and has the slot map read again: its
// master may be gone.
func (w *clusterWire) drop(conn *wire.Conn) {
	for addr, c := range w.conns {
		if c == conn {
			delete(w.conns, addr)
		}
	}
	conn.Close()
	w.cc.ReloadState(context.Background())
}

// viaGoRedis runs items through go-redis, which follows MOVED and ASK and
// retries lost connections.
func (w *clusterWire) viaGoRedis(ctx context.Context, items []clusterItem) {
	p := w.cc.Pipeline()
	cmds := make([]*redis.Cmd, len(items))
	for i, it := range items {
		cmds[i] = redis.NewCmd(ctx, it.cmd.Args()...)
		p.Process(ctx, cmds[i])
	}
	p.Exec(ctx)
	for i, it := range items {
		if it.err != nil {
			*it.err = cmds[i].Err()
		}
	}
}

func (w *clusterWire) close() {
	for _, c := range w.conns {
		c.Close()
	}
}

// redirected reports a reply that the command belongs to another node
// (MOVED, ASK) or cannot run there now (TRYAGAIN, CLUSTERDOWN).
func redirected(err error) bool {
	if err == nil {
		return false
	}
	var se wire.ServerError
	if !errors.As(err, &se) {
		return false
	}
	msg := string(se)
	for _, p := range []string{"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
