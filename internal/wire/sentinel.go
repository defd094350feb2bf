package wire

import (
	"cmp"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinels finds the master that a set of Redis Sentinels names, and
// follows it: each dial asks the sentinels for the master's address, and
// when they announce a new one (+switch-master), every connection to
// another address is closed. That ends a read blocked on the former
// master, which Redis 7.0 does not end when it turns into a replica, and
// makes the next write dial the new one. The sentinels are reached with
// go-redis's Sentinel client; the master's connections are our own.
type Sentinels struct {
	opt redis.FailoverOptions

	mu      sync.Mutex
	clients map[string]*redis.SentinelClient // by sentinel address
	conns   map[*Conn]struct{}               // open, to the master
	master  string                           // as last announced; "" before
	epoch   uint64                           // announcements so far
	stop    context.CancelFunc               // of the watchers; nil: not started
	closed  bool
	watch   sync.WaitGroup
}

// errMasterSwitched: a connection was set up to an address the sentinels
// no longer name.
var errMasterSwitched = errors.New("wire: the sentinels named another master while dialling")

// NewSentinels follows the master of fo (its MasterName, SentinelAddrs
// and their credentials). Close it when done.
func NewSentinels(fo redis.FailoverOptions) *Sentinels {
	return &Sentinels{opt: fo, clients: map[string]*redis.SentinelClient{}, conns: map[*Conn]struct{}{}}
}

// NewFailoverDialer dials the master s names, as a go-redis Sentinel
// client with fo would (TLS, user, password, database, client name),
// with fo's timeouts.
func (s *Sentinels) NewFailoverDialer(fo redis.FailoverOptions) *Dialer {
	dial1 := fo.Dialer
	if dial1 == nil {
		dial1 = redis.NewDialer(&redis.Options{DialTimeout: cmp.Or(fo.DialTimeout, 5*time.Second), TLSConfig: fo.TLSConfig})
	}
	d := &Dialer{
		dial1: dial1, sentinels: s, db: fo.DB, name: fo.ClientName, dialTimeout: cmp.Or(fo.DialTimeout, 5*time.Second),
		readTimeout: fo.ReadTimeout, writeTimeout: fo.WriteTimeout,
	}
	d.credentials = credentialsOf(fo.Username, fo.Password, fo.CredentialsProvider, fo.CredentialsProviderContext)
	return d
}

func (s *Sentinels) client(addr string) *redis.SentinelClient {
	if c, ok := s.clients[addr]; ok {
		return c
	}
	c := redis.NewSentinelClient(&redis.Options{
		Addr: addr, Username: s.opt.SentinelUsername, Password: s.opt.SentinelPassword,
		TLSConfig: s.opt.TLSConfig, Dialer: s.opt.Dialer, Protocol: 2,
		DialTimeout: s.opt.DialTimeout, ReadTimeout: s.opt.ReadTimeout, WriteTimeout: s.opt.WriteTimeout,
	})
	s.clients[addr] = c
	return c
}

// masterAddr asks the sentinels, in turn, for the master's address, and
// starts watching for a new one. epoch counts the announcements before
// the question (track).
func (s *Sentinels) masterAddr(ctx context.Context) (addr string, epoch uint64, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return "", 0, net.ErrClosed
	}
	s.startWatchLocked()
	epoch = s.epoch
	clients := make([]*redis.SentinelClient, 0, len(s.opt.SentinelAddrs))
	for _, a := range s.opt.SentinelAddrs {
		clients = append(clients, s.client(a))
	}
	s.mu.Unlock()
	var errs []error
	for _, c := range clients {
		hp, err := c.GetMasterAddrByName(ctx, s.opt.MasterName).Result()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), epoch, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return "", 0, errors.Join(append([]error{errors.New("wire: no sentinel named the master " + s.opt.MasterName)}, errs...)...)
}

// startWatchLocked subscribes to +switch-master on every sentinel (go-redis
// resubscribes after a lost connection); s.mu is held.
func (s *Sentinels) startWatchLocked() {
	if s.stop != nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	for _, a := range s.opt.SentinelAddrs {
		ps := s.client(a).Subscribe(ctx, "+switch-master")
		s.watch.Add(1)
		go func() {
			defer s.watch.Done()
			defer ps.Close()
			ch := ps.Channel()
			for {
				select {
				case m, ok := <-ch:
					if !ok {
						return
					}
					s.switched(m.Payload)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// switched handles a +switch-master announcement: "NAME OLD-IP OLD-PORT
// NEW-IP NEW-PORT". Every sentinel announces it, so it usually comes
// more than once.
func (s *Sentinels) switched(payload string) {
	f := strings.Fields(payload)
	if len(f) != 5 || f[0] != s.opt.MasterName {
		return
	}
	master := net.JoinHostPort(f[3], f[4])
	s.mu.Lock()
	s.master = master
	s.epoch++
	var gone []*Conn
	for c := range s.conns {
		if c.addr != master {
			gone = append(gone, c)
		}
	}
	s.mu.Unlock()
	for _, c := range gone {
		c.Close()
	}
}

// track keeps c, dialled to the address the sentinels named after epoch
// announcements, to close it if the master changes; false if they
// announced another master since, or s is closed.
func (s *Sentinels) track(c *Conn, epoch uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.epoch != epoch && c.addr != s.master {
		return false
	}
	s.conns[c] = struct{}{}
	c.release = func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}
	return true
}

// Close stops watching and closes the sentinel clients. Connections
// dialled stay open until their owners close them.
func (s *Sentinels) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	stop := s.stop
	clients := s.clients
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.watch.Wait()
	for _, c := range clients {
		c.Close()
	}
}
