package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
)

// chromium returns Debian's chromium, or fails saying how to install it.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: the page test drives Debian's chromium. Install it: `apt-get install -y chromium` " +
		"(.ci/run does), or set CHROMIUM to a Chromium binary")
	return ""
}

// The function browser end to end: a real math replica on Redis, the
// gateway with --ui and the example catalog, and headless Chromium
// driven by playwright-core loading the page, calling math.add and
// reading the result; then a validation error. Screenshots are kept in
// the test output's directory (logged).
//
// Not parallel: the catalog names the service math, which other
// sequential tests use too.
func TestGatewayUIInChromium(t *testing.T) {
	browser := chromium(t)
	nodeJS(t)
	e2e, _ := filepath.Abs("../gateway/e2e")
	if _, err := os.Stat(filepath.Join(e2e, "node_modules", "playwright-core")); err != nil {
		t.Fatal("gateway/e2e has no node_modules: run `make js` (npm ci in gateway/e2e) first")
	}
	ctx := context.Background()
	b := newRedisBus(t, busConfig())
	b.Client().Del(ctx, bus.RequestTopic("math"))
	h := meshtest.NewHarness(t, b)
	h.Start(examples.Math(handlers.Config{Auth: examples.DemoVerifier(), ReplicaID: "go-math-1", Logger: meshtest.Quiet}))

	cat, err := gateway.LoadCatalogFile("../" + examples.CatalogFile)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, client.Config{})
	g, err := gateway.New(gateway.Config{Client: c, Auth: examples.DemoVerifier(), Catalog: cat, UI: true, Logger: meshtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- g.Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("gateway Serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()

	dir := filepath.Join(os.TempDir(), "fnmesh-e2e")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	resultPNG, errorPNG := filepath.Join(dir, "gateway-ui.png"), filepath.Join(dir, "gateway-ui-error.png")
	os.Remove(resultPNG)
	os.Remove(errorPNG)
	cmdCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cmdCtx, "node", filepath.Join(e2e, "ui.mjs"), base, demoToken(t, "browser"), resultPNG, errorPNG)
	cmd.Env = append(os.Environ(), "CHROMIUM="+browser)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("driving chromium: %v\n%s\n%s", err, out, stderr.String())
	}
	var page struct {
		Prefilled map[string]float64 `json:"prefilled"`
		Status    string             `json:"status"`
		Result    examples.Result    `json:"result"`
		Functions []string           `json:"functions"`
		Error     struct {
			Status, Code, Message string
			Fields                []string
		} `json:"error"`
		Console []string `json:"console"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &page); err != nil {
		t.Fatalf("page report %q: %v", out, err)
	}
	t.Logf("chromium run in %v; the page showed: status %q, result %+v; error %q %q %v",
		time.Since(start).Round(time.Millisecond), page.Status, page.Result, page.Error.Code, page.Error.Message, page.Error.Fields)
	t.Logf("screenshots: %s and %s", resultPNG, errorPNG)

	if page.Result.Value != 42 || page.Result.Replica != "go-math-1" || !strings.HasPrefix(page.Status, "200") || !strings.Contains(page.Status, "replica go-math-1") {
		t.Errorf("math.add on the page: status %q, result %+v", page.Status, page.Result)
	}
	if a, okA := page.Prefilled["a"]; !okA || a != 0 || len(page.Prefilled) != 2 {
		t.Errorf("arguments prefilled from the schema: %v, want {a:0, b:0}", page.Prefilled)
	}
	if strings.Join(page.Functions, ",") != "mail.welcome,math.add,math.div,math.sqrt,math.stats" {
		t.Errorf("functions listed: %v", page.Functions)
	}
	if page.Error.Code != "invalid_argument" || !strings.HasPrefix(page.Error.Status, "400") ||
		len(page.Error.Fields) != 1 || page.Error.Fields[0] != "b: ne=0" {
		t.Errorf("validation error on the page: %+v", page.Error)
	}
	for _, l := range page.Console {
		// The browser logs the refused math.div call (400) itself; any
		// other error is the page's.
		if strings.HasPrefix(l, "pageerror") || strings.HasPrefix(l, "error") && !strings.Contains(l, "status of 400") {
			t.Errorf("browser console: %s", l)
		}
	}
	for _, p := range []string{resultPNG, errorPNG} {
		b, err := os.ReadFile(p)
		if err != nil || len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("screenshot %s: %d bytes, %v", p, len(b), err)
		}
	}
}
