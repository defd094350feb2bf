package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// TestMain lets `fnmesh bench --mode scale`, run by a test, start this
// test binary as its replica processes: they arrive with the bench
// environment and fnmesh's own arguments.
func TestMain(m *testing.M) {
	if os.Getenv("FNMESH_BENCH_SERVICE") != "" {
		if err := newApp().Run(append([]string{"fnmesh"}, os.Args[1:]...)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	redistest.Cleanup()
	os.Exit(code)
}

// A short run of the scaling benchmark with real replica processes: one
// row per replica count and round, every call answered, and the medians.
// (Its figures are not judged here: the machine is shared; docs/PERFORMANCE.md has a
// measured table.)
func TestBenchScaleMode(t *testing.T) {
	url, err := redistest.URL()
	if err != nil {
		t.Fatal(err)
	}
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	err = app.Run([]string{"fnmesh", "bench", "--mode", "scale", "--work", "io", "--counts", "1", "--counts", "2",
		"--concurrency", "32", "--duration", "500ms", "--rounds", "2", "--redis", url})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile(`(?m)^\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+x\s+(\d+)$`).FindAllStringSubmatch(out.String(), -1)
	if len(rows) != 4 || rows[0][1] != "1" || rows[1][1] != "2" || rows[2][1] != "1" || rows[3][1] != "2" {
		t.Fatalf("rows %q, want one for 1 and one for 2 replicas in each of 2 rounds", rows)
	}
	medians := regexp.MustCompile(`(?m)^\s+([12])\s+(\d+)\s+([\d.]+)x\s+[\d.]+x-[\d.]+x$`).FindAllStringSubmatch(out.String(), -1)
	if len(medians) != 2 || medians[0][3] != "1.00" {
		t.Fatalf("medians %q, want a row for 1 (speedup 1.00x) and one for 2 replicas", medians)
	}
	for _, r := range rows {
		if n, _ := strconv.Atoi(r[2]); n == 0 {
			t.Errorf("%s replicas: 0 calls/s", r[1])
		}
		if r[3] != "0" {
			t.Errorf("%s replicas: %s calls failed", r[1], r[3])
		}
	}
}
