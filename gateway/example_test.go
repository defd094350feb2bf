package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
)

// The gateway serves the mesh's functions over HTTP: POST
// /v1/functions/{service}/{function} with JSON arguments. Errors keep
// their codes, mapped to HTTP statuses. In production it checks tokens
// (Config.Auth) and runs as `fnmesh gateway`, on Redis.
func ExampleNew() {
	b := bus.NewMemory()
	defer b.Close()
	svc := handlers.NewService("math", handlers.Config{AllowUnauthenticated: true})
	handlers.Register(svc, "add", func(ctx context.Context, in struct {
		A int `json:"a"`
		B int `json:"b" validate:"gte=0"`
	}) (map[string]int, error) {
		return map[string]int{"sum": in.A + in.B}, nil
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go svc.Run(ctx, b)
	<-svc.Started() // serving, and in the registry: callers find it

	c, _ := client.New(b, client.Config{Timeout: 5 * time.Second})
	defer c.Close()
	g, err := gateway.New(gateway.Config{Client: c, AllowUnauthenticated: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, body := range []string{`{"a":1,"b":2}`, `{"a":1,"b":-2}`} {
		req := httptest.NewRequest(http.MethodPost, "/v1/functions/math/add", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, req)
		var reply struct {
			Sum    *int   `json:"sum"`
			Code   string `json:"code"`
			Fields []struct{ Field, Rule string }
		}
		json.Unmarshal(rec.Body.Bytes(), &reply)
		if reply.Sum != nil {
			fmt.Println(rec.Code, "sum", *reply.Sum)
		} else {
			fmt.Println(rec.Code, reply.Code, reply.Fields)
		}
	}
	// Output:
	// 200 sum 3
	// 400 invalid_argument [{b gte}]
}
