package wire

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// A connection dialled through the sentinels goes to the master they
// name, and is closed when they switch masters: a read blocked on the
// former master ends, and the next dial reaches the new one.
func TestSentinelsFollowTheMaster(t *testing.T) {
	ss, err := redistest.StartSentinels(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ss.Close)
	var addrs []string
	for _, s := range ss.Sentinels {
		addrs = append(addrs, s.Addr)
	}
	fo := redis.FailoverOptions{MasterName: ss.MasterName, SentinelAddrs: addrs, ReadTimeout: time.Minute}
	s := NewSentinels(fo)
	t.Cleanup(s.Close)
	d := s.NewFailoverDialer(fo)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.addr != ss.Master.Addr {
		t.Fatalf("dialled %s, want the master %s", c.addr, ss.Master.Addr)
	}
	// A read that blocks for a minute, on the master about to be demoted.
	var read Cmd
	read.Reset()
	read.Arg("xread")
	read.ReadTail(1, time.Minute, "sentinel-test", "$")
	ended := make(chan error, 1)
	go func() {
		_, err := c.Exchange(read.Bytes(), MaxBulkLen)
		ended <- err
	}()
	newMaster, err := ss.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the blocked read returned a reply, want the connection closed")
		}
	case <-ctx.Done():
		t.Fatal("a read blocked on the former master did not end after the switch")
	}
	c2, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.addr != newMaster {
		t.Fatalf("dialled %s after the switch, want the new master %s", c2.addr, newMaster)
	}
}
