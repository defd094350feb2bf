package gateway

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/fnmesh/fnmesh"
)

// Headers a browser page may send and read across origins.
const (
	HeaderTimeoutMs = "X-Fnmesh-Timeout-Ms" // the call's timeout in milliseconds, capped by MaxTimeout
	HeaderRequestID = "X-Request-Id"        // the mesh request id of the call (response)
	HeaderReplica   = "X-Fnmesh-Replica"    // the replica that answered (response)
	// HeaderIdempotencyKey makes the call run once per key within the
	// service's idempotency window; a repeat gets the first result.
	HeaderIdempotencyKey = "Idempotency-Key"
)

var (
	corsAllowHeaders  = strings.Join([]string{"Authorization", "Content-Type", HeaderTimeoutMs, HeaderIdempotencyKey, "Prefer"}, ", ")
	corsExposeHeaders = strings.Join([]string{HeaderRequestID, HeaderReplica, "Retry-After"}, ", ")
)

// cors answers preflight requests and marks responses for the origins
// the gateway allows. A cross-origin request from an origin that is not
// allowed is refused with permission_denied before anything runs.
type cors struct {
	any     bool
	origins map[string]bool
}

func newCORS(origins []string) *cors {
	c := &cors{origins: map[string]bool{}}
	for _, o := range origins {
		if o == "*" {
			c.any = true
		}
		c.origins[strings.TrimSuffix(o, "/")] = true
	}
	return c
}

// sameOrigin reports whether origin is the gateway's own (the UI).
func sameOrigin(r *http.Request, origin string) bool {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return origin == scheme+"://"+r.Host
}

func (c *cors) allowed(r *http.Request, origin string) bool {
	return c.any || c.origins[origin] || sameOrigin(r, origin)
}

// wrap applies CORS to next.
func (c *cors) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		if !c.allowed(r, origin) {
			writeError(w, fnmesh.Errorf(fnmesh.CodePermissionDenied, "origin %s is not allowed to call this gateway", origin), "")
			return
		}
		h.Set("Access-Control-Allow-Origin", origin)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", strconv.Itoa(600))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		next.ServeHTTP(w, r)
	})
}
