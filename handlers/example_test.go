package handlers_test

import (
	"context"
	"fmt"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

type Quote struct {
	SKU string `json:"sku" validate:"required"`
}

type Price struct {
	Cents int `json:"cents"`
}

// Register makes a typed Go function callable by name ("pricing.quote");
// the arguments are decoded and validated (validate tags) before it runs,
// and an *fnmesh.Error it returns reaches the caller with its code.
func ExampleRegister() {
	svc := handlers.NewService("pricing", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "quote", func(ctx context.Context, in Quote) (Price, error) {
		if in.SKU == "gone" {
			return Price{}, fnmesh.NewError("out_of_stock", in.SKU+" is gone")
		}
		return Price{Cents: 1200}, nil
	})

	b := bus.NewMemory()
	defer b.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)
	<-svc.Started() // announced: callers find it in the registry

	c, _ := client.New(b, client.Config{Timeout: 5 * time.Second})
	defer c.Close()
	var p Price
	fmt.Println(c.Call(ctx, "pricing.quote", Quote{SKU: "tea"}, &p), p.Cents)
	fmt.Println(c.Call(ctx, "pricing.quote", Quote{SKU: "gone"}, &p))
	fmt.Println(c.Call(ctx, "pricing.quote", Quote{}, &p))
	// Output:
	// <nil> 1200
	// out_of_stock: gone is gone
	// invalid_argument: arguments of pricing.quote failed validation: sku (required)
}

// Run serves the service's functions as one replica until ctx ends, then
// drains: it takes no new request and finishes the running ones. Start
// as many replicas (processes, or goroutines here) as the load needs;
// each takes a share of the requests.
func ExampleService_Run() {
	b := bus.NewMemory() // or bus.NewRedis(bus.RedisConfig{URL: "redis://127.0.0.1:6379"})
	defer b.Close()
	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true, ReplicaID: "replica-1"})
	handlers.Register(svc, "double", func(ctx context.Context, n int) (int, error) { return 2 * n, nil })

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, b) }()
	<-svc.Started()

	c, _ := client.New(b, client.Config{Timeout: 5 * time.Second})
	defer c.Close()
	var out int
	var info client.ReplyInfo
	err := c.Call(context.Background(), "math.double", 21, &out, client.WithReplyInfo(&info))
	fmt.Println(out, info.Replica, err)

	stop()              // SIGTERM in a real process
	fmt.Println(<-done) // drained
	// Output:
	// 42 replica-1 <nil>
	// <nil>
}
