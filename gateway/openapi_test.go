package gateway_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// /openapi.json documents every catalog function, with its schemas, and
// every $ref in it points at something.
func TestOpenAPIFromCatalog(t *testing.T) {
	e := newEnv(t, nil)
	r := e.get("/openapi.json")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var doc map[string]any
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["openapi"] != "3.1.0" {
		t.Fatalf("openapi %v", doc["openapi"])
	}
	paths := doc["paths"].(map[string]any)
	add, ok := paths["/v1/functions/math/add"].(map[string]any)["post"].(map[string]any)
	if !ok {
		t.Fatalf("no POST /v1/functions/math/add in %v", keys(paths))
	}
	status, ok := paths["/v1/requests/{id}"].(map[string]any)["get"].(map[string]any)
	if !ok || status["responses"].(map[string]any)["200"] == nil {
		t.Errorf("no GET /v1/requests/{id} with a 200 response in %v", keys(paths))
	}
	if add["operationId"] != "math.add" {
		t.Errorf("operationId %v", add["operationId"])
	}
	responses := add["responses"].(map[string]any)
	for _, status := range []string{"200", "202", "400", "401", "403", "404", "422", "429", "500", "503", "504"} {
		if responses[status] == nil {
			t.Errorf("math.add documents no %s response", status)
		}
	}
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	req := schemas["math.add.request"].(map[string]any)
	if _, ok := req["properties"].(map[string]any)["a"]; !ok {
		t.Errorf("math.add request schema %v lacks property a", req)
	}
	// test.ping is public: its token is optional.
	ping := paths["/v1/functions/test/ping"].(map[string]any)["post"].(map[string]any)
	if sec, _ := ping["security"].([]any); len(sec) != 2 {
		t.Errorf("public function security %v, want [{} {bearer}]", ping["security"])
	}
	if _, ok := add["security"]; ok {
		t.Errorf("math.add overrides the document's bearer requirement")
	}
	var refs []string
	collectRefs(doc, &refs)
	if len(refs) < 10 {
		t.Fatalf("only %d $refs", len(refs))
	}
	for _, ref := range refs {
		if resolve(doc, ref) == nil {
			t.Errorf("$ref %s resolves to nothing", ref)
		}
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func collectRefs(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, v := range x {
			if s, ok := v.(string); ok && k == "$ref" {
				*out = append(*out, s)
			}
			collectRefs(v, out)
		}
	case []any:
		for _, v := range x {
			collectRefs(v, out)
		}
	}
}

func resolve(doc map[string]any, ref string) any {
	var cur any = doc
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}
