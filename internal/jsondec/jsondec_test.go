package jsondec

import (
	"encoding/json"
	"reflect"
	"testing"
)

type point struct {
	X, Y int
	Tags []string `json:"tags,omitempty"`
}

// Unmarshal agrees with json.Unmarshal, value after value through the same
// pooled decoders, on good input and bad.
func TestUnmarshalAgreesWithEncodingJSON(t *testing.T) {
	inputs := []string{
		`{"X":1,"Y":2}`,
		` {"X":3,"tags":["a","b"]} ` + "\n",
		`{"X":1,"Y":2} x`,
		`{"X":1,"Y":2}{"X":3}`,
		`{"X":1,"Y":2}]`,
		`{"X":"no"}`,
		`{"X":1`,
		``,
		`   `,
		`null`,
		`{"X":4,"Y":5}`,
		`[1,2]`,
		`{"X":1e400}`,
	}
	for round := 0; round < 3; round++ { // pooled decoders are reused
		for _, in := range inputs {
			var got, want point
			gotErr := Unmarshal([]byte(in), &got)
			wantErr := json.Unmarshal([]byte(in), &want)
			if (gotErr == nil) != (wantErr == nil) {
				t.Fatalf("%q: error %v, encoding/json %v", in, gotErr, wantErr)
			}
			if wantErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: %+v, encoding/json %+v", in, got, want)
			}
		}
	}
	var raw json.RawMessage
	if err := Unmarshal([]byte(` {"a": 1} `), &raw); err != nil || string(raw) != `{"a": 1}` {
		t.Fatalf("raw: %q %v", raw, err)
	}
}

func TestUnmarshalAllocatesLess(t *testing.T) {
	data := []byte(`{"X":1,"Y":2}`)
	var p point
	ours := testing.AllocsPerRun(1000, func() { Unmarshal(data, &p) })
	theirs := testing.AllocsPerRun(1000, func() { json.Unmarshal(data, &p) })
	t.Logf("allocations per value: %.1f, json.Unmarshal %.1f", ours, theirs)
	if ours >= theirs {
		t.Fatalf("%.1f allocations per value, json.Unmarshal %.1f", ours, theirs)
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"X":1,"Y":2,"tags":["a"]}`))
	f.Add([]byte(`{"X":1} {`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var got, want point
		gotErr := Unmarshal(b, &got)
		wantErr := json.Unmarshal(b, &want)
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("%q: error %v, encoding/json %v", b, gotErr, wantErr)
		}
		if wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: %+v, encoding/json %+v", b, got, want)
		}
	})
}
