package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/internal/bench"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// The shop example in three placements, changing only --local, and as one
// process with every co-located call inline (FNMESH_INLINE): the same
// scenario gives the same results and error codes in each, and the test
// logs each placement's latency, throughput and CPU per request, measured
// in one run (the table in docs/PLACEMENT.md):
//
//	go test -run TestShopPlacements -v ./integration
func TestShopPlacements(t *testing.T) {
	dir := t.TempDir()
	shop := filepath.Join(dir, "shop")
	if out, err := exec.Command("go", "build", "-o", shop, "../cmd/examples/shop").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/examples/shop: %v\n%s", err, out)
	}
	var secret [32]byte
	rand.Read(secret[:])
	key := hex.EncodeToString(secret[:])
	placements := []struct {
		name      string
		processes []string // --local of each process; "" hosts all
		inline    string   // FNMESH_INLINE of each process
	}{
		{"one process", []string{""}, ""},
		{"one process per service", []string{"checkout", "pricing", "inventory", "mail"}, ""},
		{"mixed", []string{"checkout,pricing", "inventory,mail"}, ""},
		{"one process, inline", []string{""}, "checkout,pricing,inventory,mail"},
	}
	var results [][]string
	var table []string
	for i, pl := range placements {
		db := redisDB(t, 10+i)
		procs := startShop(t, shop, key, db, pl.processes, pl.inline)
		b, err := bus.NewRedis(bus.RedisConfig{URL: db})
		if err != nil {
			t.Fatal(err)
		}
		waitForServices(t, b, "checkout", "pricing", "inventory", "mail")
		c, err := client.New(b, client.Config{Name: "shopper", Token: shopToken(t, key), Logger: meshtest.Quiet})
		if err != nil {
			t.Fatal(err)
		}
		got := shopScenario(t, c)
		t.Logf("%s: %v", pl.name, got)
		results = append(results, got)
		table = append(table, measureShop(t, c, b, pl.name, procs))
		c.Close()
		b.Close()
		stopShop(t, procs)
	}
	for i := 1; i < len(results); i++ {
		if !slices.Equal(results[i], results[0]) {
			t.Errorf("%s gave %v, %s gave %v", placements[i].name, results[i], placements[0].name, results[0])
		}
	}
	t.Log("placement | p50 ms | calls/s (32 in flight) | shop CPU us/request | Redis CPU us/request\n" + strings.Join(table, "\n"))
}

// redisDB returns the test Redis's URL on database n, so that each
// placement starts from empty streams and registry.
func redisDB(t *testing.T, n int) string {
	u, err := url.Parse(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + strconv.Itoa(n)
	b, err := bus.NewRedis(bus.RedisConfig{URL: u.String()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Client().FlushDB(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func shopToken(t *testing.T, key string) string {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "shopper", "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func startShop(t *testing.T, shop, key, db string, locals []string, inline string) []*exec.Cmd {
	var procs []*exec.Cmd
	for _, local := range locals {
		cmd := exec.Command(shop, "--redis", db)
		if local != "" {
			cmd.Args = append(cmd.Args, "--local", local)
		}
		cmd.Env = append(os.Environ(), "FNMESH_JWT_SECRET="+key, "FNMESH_LOCAL=", "FNMESH_INLINE="+inline)
		var logs meshtest.SyncBuffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("shop --local %q:\n%s", local, logs.String())
			}
		})
		procs = append(procs, cmd)
	}
	return procs
}

func stopShop(t *testing.T, procs []*exec.Cmd) {
	for _, p := range procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		if err := p.Wait(); err != nil {
			t.Errorf("shop exited with %v", err)
		}
	}
}

func waitForServices(t *testing.T, b bus.Bus, services ...string) {
	store, err := registry.StoreFor(b)
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 30*time.Second, "shop services not announced", func() bool {
		for _, s := range services {
			v, err := store.Service(context.Background(), s)
			if err != nil || len(v.Replicas) == 0 {
				return false
			}
		}
		return true
	})
}

type order struct {
	ID    string `json:"id"`
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Email string `json:"email"`
}

type receipt struct {
	OrderID string `json:"order_id"`
	Cents   int    `json:"cents"`
	Left    int    `json:"left"`
}

// shopScenario runs the same orders and returns what each gave.
func shopScenario(t *testing.T, c *client.Client) []string {
	ctx := context.Background()
	outcome := func(o order, opts ...client.CallOption) string {
		var r receipt
		err := c.Call(ctx, "checkout.buy", o, &r, append(opts, client.WithTimeout(10*time.Second))...)
		if err != nil {
			return "error " + string(fnmesh.CodeOf(err))
		}
		return fmt.Sprintf("%+v", r)
	}
	got := []string{
		outcome(order{ID: "o1", SKU: "apple", Qty: 2, Email: "ada@example.com"}),
		outcome(order{ID: "o1", SKU: "apple", Qty: 2, Email: "ada@example.com"}), // reserved once
		outcome(order{ID: "o2", SKU: "pear", Qty: 3, Email: "bob@example.com"}),
		outcome(order{ID: "o3", SKU: "plum", Qty: 1, Email: "cy@example.com"}),  // out of stock
		outcome(order{ID: "o4", SKU: "kiwi", Qty: 1, Email: "di@example.com"}),  // no price
		outcome(order{ID: "o5", SKU: "apple", Qty: 0, Email: "ed@example.com"}), // invalid
		outcome(order{ID: "o6", SKU: "apple", Qty: 1, Email: "fi@example.com"}, client.WithToken("")),
		outcome(order{ID: "o7", SKU: "apple", Qty: 1, Email: "gu@example.com"}, client.WithToken("not-a-token")),
	}
	var sent int
	meshtest.Eventually(t, 10*time.Second, "receipts not sent", func() bool {
		err := c.Call(ctx, "mail.sent", "o1", &sent)
		return err == nil && sent == 2
	})
	var other int
	if err := c.Call(ctx, "mail.sent", "o3", &other); err != nil || other != 0 {
		t.Errorf("receipt sent for a failed order: %d %v", other, err)
	}
	return append(got, fmt.Sprintf("receipts for o1: %d", sent))
}

// measureShop times checkout.buy: p50 of sequential orders, orders per
// second with 32 in flight, and CPU per order of the shop processes and of
// Redis.
func measureShop(t *testing.T, c *client.Client, b *bus.Redis, name string, procs []*exec.Cmd) string {
	ctx := context.Background()
	buy := func(id string) error {
		var r receipt
		return c.Call(ctx, "checkout.buy", order{ID: id, SKU: "apple", Qty: 1, Email: "a@example.com"}, &r)
	}
	lat := make([]time.Duration, 300)
	for i := range lat {
		start := time.Now()
		if err := buy(fmt.Sprintf("seq-%d", i)); err != nil {
			t.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	cpu0, redis0 := procsCPU(t, procs), redisCPUOf(b)
	var done atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(2 * time.Second)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				if err := buy(fmt.Sprintf("par-%d-%d", w, i)); err != nil {
					t.Error(err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	n := done.Load()
	cpu, rcpu := procsCPU(t, procs)-cpu0, redisCPUOf(b)-redis0
	return fmt.Sprintf("%s | %.2f | %.0f | %.0f | %.0f", name, float64(lat[len(lat)/2].Microseconds())/1000,
		float64(n)/2, float64(cpu.Microseconds())/float64(n), float64(rcpu.Microseconds())/float64(n))
}

// procsCPU sums the user and system CPU time of the processes so far.
func procsCPU(t *testing.T, procs []*exec.Cmd) time.Duration {
	var total time.Duration
	for _, p := range procs {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ 100
	}
	return total
}

func redisCPUOf(b *bus.Redis) time.Duration { return bench.RedisCPU(b.Client()) }
