package client

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry"
)

// directory is the client's registry check: Call and Send of a function
// no live replica serves fail at once, from the watcher's cached view,
// instead of waiting out their deadline or queueing a request nobody
// will read.
//
// It also records each Send as queued (registry.StatusStore), for
// fnmesh status and the gateway's /v1/requests/{id}.
type directory struct {
	w     *registry.Watcher // nil: no check
	owned bool              // made by the client: closed with it

	status    registry.StatusStore // nil: sends are not recorded
	statusTTL time.Duration
	log       *slog.Logger
}

// newDirectory returns the check for a client on b: cfg.Registry, or a
// watcher of b's registry. It returns nil (no check) when
// cfg.SkipRegistryCheck is set or b has no registry (registry.StoreFor).
func newDirectory(b bus.Bus, cfg Config) (*directory, error) {
	d := &directory{statusTTL: cfg.StatusTTL, log: cfg.Logger}
	if cfg.StatusTTL >= 0 {
		d.status, _ = registry.StatusStoreFor(b) // none: not recorded
		if d.statusTTL == 0 {
			d.statusTTL = registry.DefaultStatusTTL
		}
	}
	switch {
	case cfg.SkipRegistryCheck:
	case cfg.Registry != nil:
		d.w = cfg.Registry
	default:
		w, err := registry.NewWatcher(b, registry.WatcherConfig{Logger: cfg.Logger})
		if errors.Is(err, registry.ErrNoStore) {
			cfg.Logger.Debug("client: calls are not checked against the registry: the bus has none")
			break
		}
		if err != nil {
			return nil, err
		}
		d.w, d.owned = w, true
	}
	if d.w == nil && d.status == nil {
		return nil, nil
	}
	return d, nil
}

// wrap checks every invocation before next sends it.
// A service hosted in this process (local) is not checked: its replica
// here answers, and the registry may not have seen it announce yet.
func (d *directory) wrap(next Invoker, local LocalServices, closed func() bool) Invoker {
	if d == nil {
		return next
	}
	return func(ctx context.Context, inv *Invocation) (json.RawMessage, error) {
		if closed() {
			return nil, errClosed()
		}
		if local == nil || !local.Hosts(inv.Service) {
			if d.w != nil {
				if err := d.w.Check(ctx, inv.Service, inv.Name, inv.Async); err != nil {
					return nil, err
				}
			}
		}
		out, err := next(ctx, inv)
		if err == nil && inv.Async && d.status != nil {
			// After the request is stored; a replica's record, if it
			// came first, is kept.
			if serr := d.status.Queued(context.WithoutCancel(ctx), inv.ID, inv.Service, inv.Name, d.statusTTL); serr != nil {
				d.log.Debug("client: status record not written", "id", inv.ID, "err", serr)
			}
		}
		return out, err
	}
}

func (d *directory) close() {
	if d == nil {
		return
	}
	if d.status != nil {
		// The last sends' queued records, written in the background,
		// land before a process that exits after Close (the CLI) is gone.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		d.status.Flush(ctx)
		cancel()
	}
	if d.owned {
		d.w.Close()
	}
}
