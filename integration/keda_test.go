package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// What KEDA's redis-streams trigger reads (deployments/k8s): XINFO GROUPS
// on fnmesh:{SERVICE}:req, group fnmesh. Its lag must stay exact after
// replicas trim the stream (XTRIM MINID), or lagCount could not wake a
// service scaled to zero: with no replica running, lag counts the
// requests waiting; once one runs, lag and pending go back to 0.
func TestKEDAReadsLagAfterTrimming(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{"single": redisURL, "cluster": sharedCluster(t).URL} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			service := meshtest.Name("keda")
			cfg := bus.RedisConfig{TrimInterval: 50 * time.Millisecond}
			b := busAt(t, url, cfg)
			h := &meshtest.Harness{T: t, Bus: b}
			var ran atomic.Int64
			newSvc := func() *handlers.Service {
				svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
				handlers.Register(svc, "job", func(context.Context, struct{}) (struct{}, error) {
					ran.Add(1)
					return struct{}{}, nil
				})
				return svc
			}
			svc := newSvc()
			stop := h.StartStoppable(svc)
			<-svc.Started() // announced: the client's registry check knows it
			c := h.Client(client.Config{})
			for i := 0; i < 300; i++ {
				if err := c.Call(ctx, service+".job", struct{}{}, nil); err != nil {
					t.Fatal(err)
				}
			}
			rdb := b.Client()
			key := bus.RequestTopic(service)
			meshtest.Eventually(t, 10*time.Second, "request stream not trimmed", func() bool {
				return rdb.XLen(ctx, key).Val() < 100
			})
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			// Scaled to zero: sends wait in the stream.
			for i := 0; i < 7; i++ {
				if err := c.Send(ctx, service+".job", struct{}{}); err != nil {
					t.Fatal(err)
				}
			}
			g := group(t, rdb, key)
			t.Logf("%s: after trimming to %d entries and 7 sends with no replica: lag %d, pending %d", name, rdb.XLen(ctx, key).Val(), g.Lag, g.Pending)
			if g.Lag != 7 || g.Pending != 0 {
				t.Fatalf("lag %d pending %d, want lag 7 (what KEDA's lagCount reads) and pending 0", g.Lag, g.Pending)
			}
			// A replica starts (KEDA's activation): the backlog drains.
			before := ran.Load()
			h.Start(newSvc())
			meshtest.Eventually(t, 10*time.Second, "sends not run", func() bool { return ran.Load() == before+7 })
			meshtest.Eventually(t, 10*time.Second, "lag and pending not back to 0", func() bool {
				g := group(t, rdb, key)
				return g.Lag == 0 && g.Pending == 0
			})
		})
	}
}

func group(t *testing.T, rdb redis.UniversalClient, key string) redis.XInfoGroup {
	t.Helper()
	gs, err := rdb.XInfoGroups(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.Name == bus.Group {
			return g
		}
	}
	t.Fatalf("no group %s on %s: %+v", bus.Group, key, gs)
	return redis.XInfoGroup{}
}
