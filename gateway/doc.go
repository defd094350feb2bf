// Package gateway serves fnmesh functions over HTTP, for web pages and
// anything else that speaks HTTP and JSON:
//
//	POST /v1/functions/math/add  {"a":1,"b":2}   ->  200 {"value":3,...}
//
// One *client.Client (one reply inbox) carries every request. The
// Authorization bearer token is verified at the gateway (Config.Auth) and
// forwarded to the function, whose own checks still apply. Errors come
// back as JSON, {"code", "message", "fields"}, with an HTTP status that
// depends on the code alone (HTTPStatus): invalid_argument 400,
// unauthenticated 401, permission_denied 403, not_found 404,
// resource_exhausted 429, internal 500, unavailable 503,
// deadline_exceeded 504, and 422 for a function's own application codes.
//
// A Catalog lists the functions with their JSON Schemas, for
// /v1/functions, /openapi.json and the function browser at /ui/. Until a
// discovery registry provides one, LoadCatalogFile reads it from a file.
package gateway
