package integration

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// Over Redis, as on the in-memory bus (gateway TestInternalErrorsHideDetail):
// an HTTP caller gets internal with the request id, the logs get the text.
func TestGatewayHidesInternalDetail(t *testing.T) {
	const secret = "redis://ops:s3cret-pw@10.1.2.3:6379"
	var gwLog, svcLog meshtest.SyncBuffer
	h := meshtest.NewHarness(t, newRedisBus(t, bus.RedisConfig{}))
	name := meshtest.Name("leaky")
	svc := handlers.NewService(name, handlers.Config{AllowUnauthenticated: true, Logger: slog.New(slog.NewTextHandler(&svcLog, nil))})
	handlers.Register(svc, "plain", func(context.Context, struct{}) (string, error) { return "", errors.New("dial " + secret) })
	handlers.Register(svc, "panics", func(context.Context, struct{}) (string, error) { panic("lost " + secret) })
	h.Start(svc)
	cat, err := gateway.NewStaticCatalog(gateway.Function{Name: name + ".plain"}, gateway.Function{Name: name + ".panics"})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{
		Client: h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}}), Catalog: cat,
		AllowUnauthenticated: true, Logger: slog.New(slog.NewTextHandler(&gwLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	for _, function := range []string{"plain", "panics"} {
		res, err := http.Post(srv.URL+"/v1/functions/"+name+"/"+function, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var b gateway.ErrorBody
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatalf("%s: %q: %v", function, raw, err)
		}
		id := res.Header.Get(gateway.HeaderRequestID)
		if res.StatusCode != 500 || b.Code != fnmesh.CodeInternal || id == "" || !strings.Contains(b.Message, id) || strings.Contains(string(raw), "s3cret") {
			t.Fatalf("%s: %d %s (request id %q): want 500 internal naming the request id, without the text", function, res.StatusCode, raw, id)
		}
		if !strings.Contains(gwLog.String()+svcLog.String(), id) {
			t.Errorf("%s: no log names request %s", function, id)
		}
	}
	if !strings.Contains(gwLog.String(), "dial "+secret) || !strings.Contains(svcLog.String(), "lost "+secret) {
		t.Errorf("logs lack the error text:\ngateway:\n%s\nreplica:\n%s", gwLog.String(), svcLog.String())
	}
}
