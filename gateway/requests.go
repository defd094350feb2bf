package gateway

import (
	"net/http"

	"github.com/fnmesh/fnmesh"
)

// serveRequest is GET /v1/requests/{id}: where a sent request stands
// (registry.Status): queued, running (on which replica), done,
// dead_lettered (with the code, and the reason unless it is internal),
// or unknown (never sent, sent as a call, or its record expired).
// With Auth set, it needs a valid token.
func (g *Gateway) serveRequest(w http.ResponseWriter, r *http.Request) {
	if g.cfg.Status == nil {
		writeError(w, fnmesh.NewError(fnmesh.CodeUnavailable, "this gateway keeps no request status (Config.Status)"), "")
		return
	}
	if g.cfg.Auth != nil {
		token, err := bearer(r)
		if err == nil && token == "" {
			err = fnmesh.NewError(fnmesh.CodeUnauthenticated, "missing token: send Authorization: Bearer TOKEN")
		}
		if err == nil {
			_, err = g.cfg.Auth.Verify(r.Context(), token)
		}
		if err != nil {
			if fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
				err = fnmesh.Wrap(fnmesh.CodeUnauthenticated, err)
			}
			writeError(w, err, "")
			return
		}
	}
	id := r.PathValue("id")
	if id == "" || len(id) > 256 {
		writeError(w, fnmesh.NewError(fnmesh.CodeInvalidArgument, "request id: want 1 to 256 characters"), "")
		return
	}
	st, err := g.cfg.Status.Get(r.Context(), id)
	if err != nil {
		writeError(w, fnmesh.Errorf(fnmesh.CodeUnavailable, "request status: %v", err), id)
		return
	}
	if st.Code == string(fnmesh.CodeInternal) {
		st.Reason = "the function failed unexpectedly; its logs have the details"
	}
	writeJSON(w, http.StatusOK, st)
}
