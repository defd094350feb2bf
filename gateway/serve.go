package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Serve serves g on ln until ctx ends, then shuts down gracefully: /healthz
// answers 503 at once, the listener closes after ShutdownDelay, and
// requests already running may finish for up to ShutdownTimeout. It returns nil after a clean stop.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A call may take MaxTimeout; leave room to write its answer.
		WriteTimeout: g.cfg.MaxTimeout + 10*time.Second,
		IdleTimeout:  2 * time.Minute,
		BaseContext:  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	g.draining.Store(true)
	g.cfg.Logger.Info("gateway draining", "addr", ln.Addr().String(), "timeout", g.cfg.ShutdownTimeout)
	if g.cfg.ShutdownDelay > 0 {
		// Still serving, /healthz saying 503: load balancers stop
		// sending new requests before the listener closes.
		select {
		case <-time.After(g.cfg.ShutdownDelay):
		case err := <-errc:
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		srv.Close()
	}
	return err
}

// ListenAndServe listens on addr (e.g. ":8080") and calls Serve.
func (g *Gateway) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return g.Serve(ctx, ln)
}
