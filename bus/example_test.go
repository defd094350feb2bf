package bus_test

import (
	"context"
	"log"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// NewRedis connects the mesh to Redis: one server, a Sentinel set or a
// Cluster, per the URL. Services and callers on the same Redis reach each
// other whatever process they run in. (This example needs a Redis, so it
// is compiled, not run.)
func ExampleNewRedis() {
	b, err := bus.NewRedis(bus.RedisConfig{
		URL: "redis://127.0.0.1:6379", // redis+sentinel://..., redis+cluster://..., rediss:// for TLS
		// Username, Password: a Redis ACL user (docs/SECURITY.md)
	})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "add", func(ctx context.Context, in struct{ A, B int }) (int, error) { return in.A + in.B, nil })
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)

	c, err := client.New(b, client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var sum int
	if err := c.Call(ctx, "math.add", struct{ A, B int }{1, 2}, &sum); err != nil {
		log.Fatal(err)
	}
}
