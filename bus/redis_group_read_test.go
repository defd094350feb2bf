package bus

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/bench/netdelay"
	"github.com/fnmesh/fnmesh/internal/redistest"
)

// On a link slower than readAheadRTT a replica keeps a second read
// waiting at Redis (readAhead), so that a request arriving while one
// read's reply travels back is read at once, not a round trip later:
// with the replica idle, two of its reads are blocked on the stream.
func TestReplicaReadsAheadOnASlowLink(t *testing.T) {
	srv, err := redistest.Start(redistest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	proxy, err := netdelay.Start(srv.Addr, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	r, err := NewRedis(RedisConfig{URL: "redis://" + proxy.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := r.GroupSubscriber(GroupConfig{Consumer: "c1", Concurrency: 8, SettleDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	reqs, err := sub.(RequestSubscriber).SubscribeRequests(ctx, RequestTopic("slow"))
	if err != nil {
		t.Fatal(err)
	}
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { direct.Close() })
	blockedReads := func() int {
		list, err := direct.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "cmd=xreadgroup") && strings.Contains(line, "flags=b") {
				n++
			}
		}
		return n
	}
	// Requests through the combiner let it measure the link; each is
	// read, run and acked.
	for i := 0; i < 20; i++ {
		if err := r.SendRequest(ctx, "slow", &Request{ID: strconv.Itoa(i), Function: "f", Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-reqs:
			d.Ack()
		case <-ctx.Done():
			t.Fatalf("request %d not delivered", i)
		}
	}
	if rtt := r.comb.rtt.get(); rtt < readAheadRTT {
		t.Fatalf("round trip measured %v through a proxy 1 ms each way", rtt)
	}
	// Idle now: both loops' reads wait at Redis.
	deadline := time.Now().Add(10 * time.Second)
	for blockedReads() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads blocked on the stream, want 2", blockedReads())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
