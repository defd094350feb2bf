package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
)

// A call whose request Redis refuses to store fails at once with
// unavailable and Redis's reason, not at its deadline: the caller does
// not wait for the write, but learns of its failure. A send reports it
// too.
func TestRefusedRequestFailsAtOnce(t *testing.T) {
	ctx := context.Background()
	service := meshtest.Name("refused")
	b := newRedisBus(t, busConfig())
	defer b.Close()
	rdb := b.Client()
	// The request stream's key holds a string: every XADD to it fails.
	if err := rdb.Set(ctx, bus.RequestTopic(service), "not a stream", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	defer rdb.Del(ctx, bus.RequestTopic(service))
	// No replica ever ran: skip the registry check, which would refuse the
	// call before it reaches Redis (not_found), to exercise the XADD error.
	c := newClient(t, client.Config{Breaker: client.BreakerConfig{Disabled: true}, SkipRegistryCheck: true})
	for _, send := range []bool{false, true} {
		start := time.Now()
		var err error
		if send {
			err = c.Send(ctx, service+".f", struct{}{})
		} else {
			err = c.Call(ctx, service+".f", struct{}{}, nil, client.WithTimeout(20*time.Second))
		}
		took := time.Since(start)
		e := meshtest.WantCode(t, err, fnmesh.CodeUnavailable)
		if !strings.Contains(e.Message, "WRONGTYPE") {
			t.Errorf("send=%v: message %q does not give Redis's reason", send, e.Message)
		}
		if took > 10*time.Second {
			t.Errorf("send=%v: failed after %v, want at once, not near the 20s deadline", send, took)
		}
	}
}
