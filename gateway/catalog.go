package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/fnmesh/fnmesh/client"
)

// Function describes one function the gateway lists, documents and may
// restrict calls to.
type Function struct {
	// Name is "service.function", e.g. "math.add".
	Name string `json:"name"`
	// Description says what the function does, for people.
	Description string `json:"description,omitempty"`
	// Request is the JSON Schema of the arguments; empty: any JSON.
	Request json.RawMessage `json:"request,omitempty"`
	// Response is the JSON Schema of the result; empty: any JSON.
	Response json.RawMessage `json:"response,omitempty"`
	// Public lets requests without a token call the function through a
	// gateway that checks tokens (as handlers.Public does at the service).
	Public bool `json:"public,omitempty"`
	// Async marks a function meant to be sent fire-and-forget; the UI
	// sends it by default.
	Async bool `json:"async,omitempty"`
}

// Catalog lists the functions a gateway knows about. The gateway asks it
// on every listing and on every call, so implementations that fetch from
// elsewhere (a discovery registry) should cache.
type Catalog interface {
	// Functions returns every function, sorted by name.
	Functions(ctx context.Context) ([]Function, error)
	// Function returns the function called name; ok is false when the
	// catalog does not list it.
	Function(ctx context.Context, name string) (f Function, ok bool, err error)
}

// StaticCatalog is a Catalog fixed at construction, e.g. read from a file
// with LoadCatalogFile. The zero value lists nothing.
type StaticCatalog struct {
	fns   []Function
	index map[string]int
}

var _ Catalog = (*StaticCatalog)(nil)

// NewStaticCatalog checks fns (names, schemas) and returns a catalog of
// them.
func NewStaticCatalog(fns ...Function) (*StaticCatalog, error) {
	c := &StaticCatalog{fns: append([]Function(nil), fns...), index: map[string]int{}}
	sort.Slice(c.fns, func(i, j int) bool { return c.fns[i].Name < c.fns[j].Name })
	var errs []error
	for i, f := range c.fns {
		if _, _, err := client.SplitName(f.Name); err != nil {
			errs = append(errs, fmt.Errorf("gateway: catalog: %w", err))
			continue
		}
		if _, dup := c.index[f.Name]; dup {
			errs = append(errs, fmt.Errorf("gateway: catalog: %s listed twice", f.Name))
		}
		c.index[f.Name] = i
		for what, s := range map[string]json.RawMessage{"request": f.Request, "response": f.Response} {
			if len(s) > 0 && !isJSONObjectOrBool(s) {
				errs = append(errs, fmt.Errorf("gateway: catalog: %s: %s schema is not a JSON object", f.Name, what))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

func isJSONObjectOrBool(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	if string(b) == "true" || string(b) == "false" {
		return true
	}
	var m map[string]any
	return len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &m) == nil
}

// Functions implements Catalog.
func (c *StaticCatalog) Functions(context.Context) ([]Function, error) {
	return append([]Function(nil), c.fns...), nil
}

// Function implements Catalog.
func (c *StaticCatalog) Function(_ context.Context, name string) (Function, bool, error) {
	i, ok := c.index[name]
	if !ok {
		return Function{}, false, nil
	}
	return c.fns[i], true, nil
}

// CatalogFile is the JSON layout LoadCatalogFile reads:
//
//	{"functions": [{"name": "math.add", "description": "...",
//	  "request": {JSON Schema}, "response": {JSON Schema}, "public": false}]}
type CatalogFile struct {
	Functions []Function `json:"functions"`
}

// LoadCatalogFile reads a catalog from a JSON file (see CatalogFile).
func LoadCatalogFile(path string) (*StaticCatalog, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: catalog: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f CatalogFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("gateway: catalog %s: %w", path, err)
	}
	return NewStaticCatalog(f.Functions...)
}
