package handlers

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

type plainInner struct{ N int }
type plainOuter struct {
	A     string
	B     [2]float64
	Inner plainInner `json:"inner"`
}
type withSlice struct{ Items []string }
type withUnexported struct {
	A int
	b int
}
type withSkipped struct {
	A int `json:"-"`
}
type withEmbedded struct{ plainInner }
type withTime struct{ At time.Time }
type rawText string

func (r rawText) MarshalText() ([]byte, error) { return []byte("x"), nil }

// Only types whose Go copy equals their JSON round trip pass as values.
func TestPlainType(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want bool
	}{
		{1, true}, {"s", true}, {3.5, true}, {true, true}, {struct{}{}, true},
		{plainOuter{}, true}, {[3]int{}, true},
		{withSlice{}, false}, {withUnexported{}, false}, {withSkipped{}, false},
		{withEmbedded{}, false}, {withTime{}, false}, {rawText(""), false},
		{[]int{}, false}, {map[string]int{}, false}, {new(int), false},
		{json.RawMessage{}, false}, {any(nil), false},
	} {
		if tc.v == nil {
			continue
		}
		if got := plainType(reflect.TypeOf(tc.v)); got != tc.want {
			t.Errorf("plainType(%T) = %v, want %v", tc.v, got, tc.want)
		}
	}
}
