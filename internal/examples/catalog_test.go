package examples

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/fnmesh/fnmesh/gateway"
)

var update = flag.Bool("update", false, "rewrite "+CatalogFile+" from the Go types")

// The committed catalog file is what Catalog generates from the Go types:
// change a type, run `go test ./internal/examples -run CatalogFile -update`.
func TestCatalogFileIsCurrent(t *testing.T) {
	path := filepath.Join("..", "..", CatalogFile)
	want, err := json.MarshalIndent(gateway.CatalogFile{Functions: Catalog()}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date: run go test ./internal/examples -run CatalogFile -update", CatalogFile)
	}
	cat, err := gateway.LoadCatalogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, ok, _ := cat.Function(t.Context(), "math.add")
	if !ok {
		t.Fatal("math.add not in the catalog")
	}
	var schema struct {
		Type       string                     `json:"type"`
		Properties map[string]json.RawMessage `json:"properties"`
		Required   []string                   `json:"required"`
	}
	if err := json.Unmarshal(f.Request, &schema); err != nil {
		t.Fatal(err)
	}
	// As the replica does: add takes {"a":1} (b is 0), so nothing is
	// required.
	if schema.Type != "object" || schema.Properties["a"] == nil || schema.Properties["b"] == nil || len(schema.Required) != 0 {
		t.Fatalf("math.add request schema: %s", f.Request)
	}
}
