package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/registry"
)

// OpenAPI returns the OpenAPI 3.1 document of the functions in the
// catalog: one POST operation per function, its request body and 200
// result typed by the function's JSON Schemas, every error status with
// the ErrorBody schema.
func (g *Gateway) OpenAPI(ctx context.Context) ([]byte, error) {
	fns, err := g.cfg.Catalog.Functions(ctx)
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(buildOpenAPI(fns, g.cfg.Auth != nil), "", "  ")
}

func (g *Gateway) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	doc, err := g.OpenAPI(r.Context())
	if err != nil {
		writeError(w, fnmesh.Errorf(fnmesh.CodeUnavailable, "catalog: %v", err), "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(doc)
}

type obj = map[string]any

var componentRE = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// errorStatuses are the statuses an operation documents, with what each
// means.
var errorStatuses = []struct {
	code fnmesh.Code
	desc string
}{
	{fnmesh.CodeInvalidArgument, "invalid_argument: the body is not valid JSON for the function, or fails its validation (fields lists each field)"},
	{fnmesh.CodeUnauthenticated, "unauthenticated: token missing, malformed, expired or wrongly signed"},
	{fnmesh.CodePermissionDenied, "permission_denied: the token may not call this function, or the page's origin is not allowed"},
	{fnmesh.CodeNotFound, "not_found: no such function"},
	{"application", "the function's own application error: code says which (e.g. insufficient_funds)"},
	{fnmesh.CodeResourceExhausted, "resource_exhausted: rate limit or backlog reached; see Retry-After"},
	{fnmesh.CodeInternal, "internal: the function failed unexpectedly"},
	{fnmesh.CodeUnavailable, "unavailable: the mesh cannot be reached, or the function's circuit breaker is open"},
	{fnmesh.CodeDeadlineExceeded, "deadline_exceeded: no result within the timeout (also: no replica running)"},
}

func buildOpenAPI(fns []Function, checksTokens bool) obj {
	schemas := obj{
		"Error": obj{
			"type":     "object",
			"required": []string{"code", "message", "fields"},
			"properties": obj{
				"code":       obj{"type": "string", "description": "mesh code (invalid_argument, ...) or the function's application code"},
				"message":    obj{"type": "string"},
				"request_id": obj{"type": "string"},
				"fields": obj{"type": "array", "items": obj{
					"type":     "object",
					"required": []string{"field", "rule"},
					"properties": obj{
						"field": obj{"type": "string", "description": "JSON path of the field, e.g. items[0].qty"},
						"rule":  obj{"type": "string", "description": "the failed rule, e.g. required, gte"},
						"param": obj{"type": "string", "description": "the rule's parameter, e.g. 0 for gte=0"},
					},
				}},
			},
		},
		"Accepted": obj{
			"type":     "object",
			"required": []string{"request_id", "function"},
			"properties": obj{
				"request_id": obj{"type": "string"},
				"function":   obj{"type": "string"},
			},
		},
	}
	responses := obj{
		"Accepted": obj{
			"description": "queued (async=1 or Prefer: respond-async): the function will run, its result dropped",
			"content":     obj{"application/json": obj{"schema": ref("schemas", "Accepted")}},
		},
	}
	for _, s := range errorStatuses {
		responses[errorResponseName(s.code)] = obj{
			"description": s.desc,
			"content":     obj{"application/json": obj{"schema": ref("schemas", "Error")}},
		}
	}
	parameters := obj{
		"timeout_ms":      obj{"name": "timeout_ms", "in": "query", "description": "timeout in milliseconds, capped by the gateway's maximum", "schema": obj{"type": "integer", "minimum": 1}},
		"async":           obj{"name": "async", "in": "query", "description": "1: queue the call and answer 202 at once", "schema": obj{"type": "string", "enum": []string{"1", "true"}}},
		"timeout_header":  obj{"name": HeaderTimeoutMs, "in": "header", "description": "timeout in milliseconds (when timeout_ms is absent)", "schema": obj{"type": "integer", "minimum": 1}},
		"idempotency_key": obj{"name": HeaderIdempotencyKey, "in": "header", "description": "run once per key within the service's window; a repeat gets the first result", "schema": obj{"type": "string"}},
	}
	schemas["Status"] = obj{
		"type":     "object",
		"required": []string{"id", "state"},
		"properties": obj{
			"id":       obj{"type": "string"},
			"state":    obj{"type": "string", "enum": []string{registry.StateUnknown, registry.StateQueued, registry.StateRunning, registry.StateDone, registry.StateDeadLettered}},
			"service":  obj{"type": "string"},
			"function": obj{"type": "string"},
			"replica":  obj{"type": "string", "description": "the replica that runs it, or last ran it"},
			"attempt":  obj{"type": "integer"},
			"code":     obj{"type": "string", "description": "dead_lettered: the error's code"},
			"reason":   obj{"type": "string", "description": "dead_lettered: why (generic for internal)"},
			"updated":  obj{"type": "string", "format": "date-time"},
		},
	}
	paths := obj{
		"/v1/requests/{id}": obj{"get": obj{
			"operationId": "requestStatus",
			"summary":     "where a request sent with async=1 stands",
			"description": "queued, running (on which replica), done, dead_lettered (and why), or unknown: never sent, sent as a call, or its record expired.",
			"parameters":  []any{obj{"name": "id", "in": "path", "required": true, "schema": obj{"type": "string", "minLength": 1, "maxLength": 256}}},
			"responses": obj{
				"200": obj{"description": "the request's status", "content": obj{"application/json": obj{"schema": ref("schemas", "Status")}}},
				"400": ref("responses", errorResponseName(fnmesh.CodeInvalidArgument)),
				"401": ref("responses", errorResponseName(fnmesh.CodeUnauthenticated)),
				"503": ref("responses", errorResponseName(fnmesh.CodeUnavailable)),
			},
		}},
	}
	tags := map[string]bool{}
	for _, f := range fns {
		service, function, _ := strings.Cut(f.Name, ".")
		tags[service] = true
		name := componentRE.ReplaceAllString(f.Name, "_")
		schemas[name+".request"] = schemaOrAny(f.Request)
		schemas[name+".response"] = schemaOrAny(f.Response)
		op := obj{
			"operationId": f.Name,
			"summary":     f.Name,
			"tags":        []string{service},
			"parameters":  []any{ref("parameters", "timeout_ms"), ref("parameters", "async"), ref("parameters", "timeout_header"), ref("parameters", "idempotency_key")},
			"requestBody": obj{
				"description": "the function's arguments; an empty body means none",
				"content":     obj{"application/json": obj{"schema": ref("schemas", name+".request")}},
			},
			"responses": operationResponses(name),
		}
		if f.Description != "" {
			op["description"] = f.Description
		}
		if f.Public || !checksTokens {
			op["security"] = []any{obj{}, obj{"bearer": []string{}}} // token optional
		}
		paths["/v1/functions/"+service+"/"+function] = obj{"post": op}
	}
	tagList := make([]string, 0, len(tags))
	for t := range tags {
		tagList = append(tagList, t)
	}
	sort.Strings(tagList)
	tagObjs := make([]any, 0, len(tagList))
	for _, t := range tagList {
		tagObjs = append(tagObjs, obj{"name": t})
	}
	return obj{
		"openapi": "3.1.0",
		"info": obj{
			"title":       "fnmesh gateway",
			"version":     "1",
			"description": "Functions of the mesh, called over HTTP. Errors carry the mesh code; the HTTP status depends on the code alone.",
		},
		"servers":  []any{obj{"url": "/"}},
		"tags":     tagObjs,
		"security": []any{obj{"bearer": []string{}}},
		"paths":    paths,
		"components": obj{
			"schemas":         schemas,
			"responses":       responses,
			"parameters":      parameters,
			"securitySchemes": obj{"bearer": obj{"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
		},
	}
}

func operationResponses(name string) obj {
	rs := obj{
		"200": obj{
			"description": "the function's result",
			"headers": obj{
				HeaderRequestID: obj{"description": "the mesh request id", "schema": obj{"type": "string"}},
				HeaderReplica:   obj{"description": "the replica that ran the call", "schema": obj{"type": "string"}},
			},
			"content": obj{"application/json": obj{"schema": ref("schemas", name+".response")}},
		},
		"202": ref("responses", "Accepted"),
	}
	for _, s := range errorStatuses {
		status := HTTPStatus(s.code)
		rs[strconv.Itoa(status)] = ref("responses", errorResponseName(s.code))
	}
	return rs
}

func errorResponseName(code fnmesh.Code) string { return "error." + string(code) }

func ref(kind, name string) obj { return obj{"$ref": "#/components/" + kind + "/" + name} }

func schemaOrAny(s json.RawMessage) any {
	if len(s) == 0 {
		return obj{}
	}
	return s
}
