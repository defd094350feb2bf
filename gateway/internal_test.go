package gateway_test

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

// An internal error reaches the HTTP caller as a generic message with the
// request id; its text (an error from deep inside, a panic value) is in
// the logs under that id, not in the response. Other codes keep their
// messages.
func TestInternalErrorsHideDetail(t *testing.T) {
	const secret = "postgres://app:hunter2@10.0.0.7/orders"
	var gwLog, svcLog meshtest.SyncBuffer
	h := meshtest.NewHarness(t, bus.NewMemory())
	svc := handlers.NewService("leaky", handlers.Config{AllowUnauthenticated: true, Logger: slog.New(slog.NewTextHandler(&svcLog, nil))})
	handlers.Register(svc, "plain", func(context.Context, struct{}) (string, error) {
		return "", errors.New("dial " + secret + ": connection refused")
	})
	handlers.Register(svc, "coded", func(context.Context, struct{}) (string, error) {
		return "", fnmesh.NewError(fnmesh.CodeInternal, "query failed on "+secret)
	})
	handlers.Register(svc, "panics", func(context.Context, struct{}) (string, error) { panic("cannot reach " + secret) })
	handlers.Register(svc, "refuses", func(context.Context, struct{}) (string, error) {
		return "", fnmesh.NewError(fnmesh.CodeUnavailable, "warehouse offline")
	})
	h.Start(svc)
	cat, err := gateway.NewStaticCatalog(gateway.Function{Name: "leaky.plain"}, gateway.Function{Name: "leaky.coded"},
		gateway.Function{Name: "leaky.panics"}, gateway.Function{Name: "leaky.refuses"})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{
		Client: h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}}), Catalog: cat, AllowUnauthenticated: true,
		Logger: slog.New(slog.NewTextHandler(&gwLog, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	post := func(function string) (gateway.ErrorBody, string) {
		t.Helper()
		res, err := http.Post(srv.URL+"/v1/functions/leaky/"+function, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		var b gateway.ErrorBody
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatalf("%s: body %q: %v", function, raw, err)
		}
		if res.StatusCode != gateway.HTTPStatus(b.Code) {
			t.Errorf("%s: status %d for code %s", function, res.StatusCode, b.Code)
		}
		if strings.Contains(string(raw), "hunter2") || strings.Contains(string(raw), "10.0.0.7") {
			t.Errorf("%s: response shows internal detail: %s", function, raw)
		}
		return b, res.Header.Get(gateway.HeaderRequestID)
	}
	for _, function := range []string{"plain", "coded", "panics"} {
		b, id := post(function)
		if b.Code != fnmesh.CodeInternal || id == "" || b.RequestID != id || !strings.Contains(b.Message, id) {
			t.Fatalf("%s: body %+v, request id %q: want internal with a generic message naming the request id", function, b, id)
		}
		logs := gwLog.String() + svcLog.String()
		if !strings.Contains(logs, id) {
			t.Errorf("%s: no log line names request %s", function, id)
		}
	}
	// The text is logged: the gateway logs what the replica answered, the
	// replica logs the panic value.
	if !strings.Contains(gwLog.String(), "dial "+secret) || !strings.Contains(gwLog.String(), "query failed on "+secret) {
		t.Errorf("gateway log lacks the internal errors' text:\n%s", gwLog.String())
	}
	if !strings.Contains(svcLog.String(), "cannot reach "+secret) {
		t.Errorf("replica log lacks the panic value:\n%s", svcLog.String())
	}
	if b, _ := post("refuses"); b.Code != fnmesh.CodeUnavailable || b.Message != "warehouse offline" {
		t.Errorf("unavailable: body %+v, want the function's message kept", b)
	}
}
