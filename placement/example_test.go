package placement_test

import (
	"context"
	"fmt"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/placement"
)

// A program registers its services and hosts those the configuration
// names; its client calls them in-process.
func Example() {
	math := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(math, "add", func(_ context.Context, in struct{ A, B int }) (int, error) { return in.A + in.B, nil })

	// The value of a --local flag; else FNMESH_LOCAL, else a file; none
	// set: every service given to New.
	local, _ := placement.Resolve("math", "")
	p, err := placement.New(placement.Config{Local: local}, math)
	if err != nil {
		fmt.Println(err)
		return
	}
	b := bus.NewMemory() // or bus.NewRedis: other processes reach math there
	defer b.Close()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, b) }()
	defer func() { stop(); <-done }()
	p.Started(ctx)

	c, _ := client.New(b, client.Config{Local: p})
	defer c.Close()
	var sum int
	err = c.Call(ctx, "math.add", struct{ A, B int }{1, 2}, &sum)
	fmt.Println(sum, err, p.Hosted())

	_, err = placement.New(placement.Config{Local: []string{"math", "pricing"}}, math)
	fmt.Println(err)
	// Output:
	// 3 <nil> [math]
	// placement: asked to host pricing, which this program does not register (it registers: math)
}
