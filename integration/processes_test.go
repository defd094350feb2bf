package integration

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
)

// newClient returns a client on its own Redis connection.
func newClient(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	return newClientOn(t, busConfig(), cfg)
}

// newClientOn is newClient on a bus of its own with bcfg (its URL: the
// test server's if empty).
func newClientOn(t testing.TB, bcfg bus.RedisConfig, cfg client.Config) *client.Client {
	t.Helper()
	b := newRedisBus(t, bcfg)
	t.Cleanup(func() { b.Close() })
	if cfg.Logger == nil {
		cfg.Logger = meshtest.Quiet
	}
	c, err := client.New(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// load runs conc callers of fn until stop is closed and returns how many
// calls each replica answered and the calls that failed.
func load(c *client.Client, fn string, in any, conc int, stop <-chan struct{}, onReply func(replica string)) (failed []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var who string
				err := c.Call(context.Background(), fn, in, &who, client.WithTimeout(10*time.Second))
				if err != nil {
					mu.Lock()
					failed = append(failed, err)
					mu.Unlock()
					continue
				}
				onReply(who)
			}
		}()
	}
	wg.Wait()
	return failed
}

// spread makes calls calls of fn from conc callers and returns how many
// each replica answered; any failed call fails the test.
func spread(t *testing.T, c *client.Client, fn string, in any, conc, calls int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	per := map[string]int{}
	var n atomic.Int64
	stop := make(chan struct{})
	var once sync.Once
	failed := load(c, fn, in, conc, stop, func(r string) {
		mu.Lock()
		per[r]++
		mu.Unlock()
		if n.Add(1) >= int64(calls) {
			once.Do(func() { close(stop) })
		}
	})
	if len(failed) > 0 {
		t.Fatalf("%d calls failed, first: %v", len(failed), failed[0])
	}
	return per
}

func TestCallsSpreadOverReplicaProcesses(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("spread")
	for i := 1; i <= 3; i++ {
		startWorker(t, workerSpec{Service: service, Replica: fmt.Sprintf("r%d", i)})
	}
	c := newClient(t, client.Config{})
	const calls = 600
	per := spread(t, c, service+".sleep", SleepIn{Ms: 2}, 24, calls)
	t.Logf("calls per replica process: %v", per)
	if len(per) != 3 {
		t.Fatalf("answered by %v, want 3 replicas", per)
	}
	for r, k := range per {
		if k < calls/10 {
			t.Errorf("replica %s answered %d of %d calls, want at least a tenth", r, k, calls)
		}
	}
}

func TestAddingAReplicaAddsCapacity(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("scale")
	// Each replica runs at most 4 calls of 20 ms at once; 32 callers keep
	// both saturated, so each should answer about half once both run.
	startWorker(t, workerSpec{Service: service, Replica: "first", Concurrency: 4})
	c := newClient(t, client.Config{})
	var mu sync.Mutex
	per := map[string]int{}
	phase := "one"
	counts := map[string]map[string]int{"one": {}, "two": {}}
	stop := make(chan struct{})
	done := make(chan []error)
	go func() {
		done <- load(c, service+".sleep", SleepIn{Ms: 20}, 32, stop, func(r string) {
			mu.Lock()
			per[r]++
			counts[phase][r]++
			mu.Unlock()
		})
	}()
	time.Sleep(500 * time.Millisecond) // a stretch of load on one replica
	// Phase two begins before the second replica starts: it serves as
	// soon as it is in the group, before startWorker has read its ready.
	mu.Lock()
	phase = "two"
	mu.Unlock()
	startWorker(t, workerSpec{Service: service, Replica: "second", Concurrency: 4})
	time.Sleep(time.Second) // a stretch of load on two
	close(stop)
	if failed := <-done; len(failed) > 0 {
		t.Fatalf("%d calls failed while scaling, first: %v", len(failed), failed[0])
	}
	one, two := counts["one"], counts["two"]
	t.Logf("calls with one replica: %v; after adding one: %v", one, two)
	if one["second"] != 0 || one["first"] == 0 {
		t.Fatalf("phase one: %v", one)
	}
	total := two["first"] + two["second"]
	if two["second"] < total/4 {
		t.Fatalf("the added replica answered %d of %d calls, want at least a quarter", two["second"], total)
	}
}
