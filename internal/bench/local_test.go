package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// --mode local measures every path it names: each figure is set, and the
// line prints them.
func TestRunLocalMeasuresEveryPath(t *testing.T) {
	rounds, med, err := RunLocal(context.Background(), Options{Duration: 50 * time.Millisecond, Sequential: 50, Concurrency: 4}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rounds) != 1 {
		t.Fatalf("%d rounds, want 1", len(rounds))
	}
	for name, d := range map[string]time.Duration{
		"direct p50": med.DirectP50, "co-located p50": med.LocalP50, "co-located HS256 p50": med.LocalTokenP50,
		"inline p50": med.InlineP50, "inline HS256 p50": med.InlineTokenP50, "bus p50": med.MemoryP50,
		"co-located CPU": med.LocalCPU, "inline CPU": med.InlineCPU, "bus CPU": med.MemoryCPU,
	} {
		if d <= 0 {
			t.Errorf("%s is %v", name, d)
		}
	}
	if med.LocalPerSecond <= 0 || med.InlinePerSecond <= 0 || med.MemoryPerSecond <= 0 || med.Ratio <= 0 || med.InlineRatio <= 0 {
		t.Errorf("throughput not measured: %+v", med)
	}
	for _, field := range []string{"inline_per_s=", "inline_throughput_ratio=", "throughput_ratio=", "allocs_per_call_inline="} {
		if !strings.Contains(MedianLine(1, med), field) {
			t.Errorf("line lacks %s: %s", field, MedianLine(1, med))
		}
	}
}
