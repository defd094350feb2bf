package examples

import (
	"encoding/json"
	"reflect"

	"github.com/fnmesh/fnmesh/gateway"
	"github.com/fnmesh/fnmesh/registry"
)

// CatalogFile is where the example services' catalog is committed, for
// `fnmesh gateway --catalog` (relative to the repository root).
const CatalogFile = "cmd/examples/catalog.json"

// Catalog lists the example services' functions, with JSON Schemas
// generated from their Go types, for the gateway's /openapi.json and UI.
func Catalog() []gateway.Function {
	return []gateway.Function{
		function[AddIn, Result]("math.add", "Adds a and b; the result names the replica that computed it.", false, false),
		function[DivIn, Result]("math.div", "Divides a by b; b must not be 0 (validated: invalid_argument naming b).", false, false),
		function[SqrtIn, Result]("math.sqrt", "Square root of x; a negative x is the application error negative_input.", false, false),
		function[struct{}, map[string]any]("math.stats", "Calls served by the answering replica; admins only (permission_denied otherwise).", false, false),
		function[Mail, struct{}]("mail.welcome", "Sends a welcome mail; meant to be sent async.", false, true),
	}
}

func function[In, Out any](name, description string, public, async bool) gateway.Function {
	return gateway.Function{
		Name: name, Description: description, Public: public, Async: async,
		Request: SchemaOf[In](), Response: SchemaOf[Out](),
	}
}

// SchemaOf returns the JSON Schema of T: registry.Schema, the one
// generator replicas announce with.
func SchemaOf[T any]() json.RawMessage { return registry.Schema(reflect.TypeFor[T]()) }
