package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

type AddIn struct {
	A int `json:"a" validate:"gte=0"`
	B int `json:"b" validate:"gte=0"`
}

type AddOut struct {
	Sum int `json:"sum"`
}

// A service and a caller in one process, on the in-memory bus. Moving
// math to its own process changes only the bus: bus.NewRedis(...).
func Example() {
	b := bus.NewMemory()
	defer b.Close()

	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (AddOut, error) {
		return AddOut{Sum: in.A + in.B}, nil
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)
	<-svc.Started() // announced: callers find it in the registry

	c, _ := client.New(b, client.Config{})
	defer c.Close()

	var out AddOut
	err := c.Call(ctx, "math.add", AddIn{A: 1, B: 2}, &out, client.WithTimeout(2*time.Second))
	fmt.Println(out.Sum, err)

	err = c.Call(ctx, "math.add", AddIn{A: -1}, &out)
	fmt.Println(errors.Is(err, fnmesh.ErrInvalidArgument), err)

	err = c.Call(ctx, "math.mul", AddIn{}, &out)
	var fe *fnmesh.Error
	errors.As(err, &fe)
	fmt.Println(fe.Code)
	// Output:
	// 3 <nil>
	// true invalid_argument: arguments of math.add failed validation: a (gte=0)
	// not_found
}

// Call waits for the function's result; its error keeps the function's
// code across processes.
func ExampleClient_Call() {
	b := bus.NewMemory()
	defer b.Close()
	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (AddOut, error) {
		return AddOut{Sum: in.A + in.B}, nil
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)
	<-svc.Started() // announced: callers find it in the registry

	c, _ := client.New(b, client.Config{Timeout: 5 * time.Second})
	defer c.Close()
	var out AddOut
	if err := c.Call(ctx, "math.add", AddIn{A: 40, B: 2}, &out); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(out.Sum)
	// Output: 42
}

// Send returns once the request is queued; the function runs as a call
// would, and its result is dropped.
func ExampleClient_Send() {
	b := bus.NewMemory()
	defer b.Close()
	sent := make(chan string, 1)
	svc := handlers.NewService("mail", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "welcome", func(ctx context.Context, in struct{ To string }) (struct{}, error) {
		sent <- in.To
		return struct{}{}, nil
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)
	<-svc.Started() // announced: callers find it in the registry

	c, _ := client.New(b, client.Config{})
	defer c.Close()
	if err := c.Send(ctx, "mail.welcome", struct{ To string }{"ada@example.com"}); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("welcomed", <-sent)
	// Output: welcomed ada@example.com
}
