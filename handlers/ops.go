package handlers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// healthState is what /healthz reports. A nil *healthState ignores set.
type healthState struct{ serving atomic.Bool }

func (h *healthState) set(serving bool) {
	if h != nil {
		h.serving.Store(serving)
	}
}

// HealthPath is where the ops server answers health checks.
const HealthPath = "/healthz"

// serveOps serves /healthz and Config.OpsHandlers on Config.OpsAddr.
func (s *Service) serveOps() (stop func(), h *healthState, err error) {
	h = &healthState{}
	mux := http.NewServeMux()
	mux.HandleFunc(HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !h.serving.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not serving (starting or draining)")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	for path, handler := range s.cfg.OpsHandlers {
		mux.Handle(path, handler)
	}
	ln, err := net.Listen("tcp", s.cfg.OpsAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("handlers: ops server on %s: %w", s.cfg.OpsAddr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("ops server stopped", "addr", s.cfg.OpsAddr, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, h, nil
}
