package client

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry"
)

// directory is the client's registry check: Call and Send of a function
// no live replica serves fail at once, from the watcher's cached view,
// instead of waiting out their deadline or queueing a request nobody
// will read.
type directory struct {
	w     *registry.Watcher
	owned bool // made by the client: closed with it
}

// newDirectory returns the check for a client on b: cfg.Registry, or a
// watcher of b's registry. It returns nil (no check) when
// cfg.SkipRegistryCheck is set or b has no registry (registry.StoreFor).
func newDirectory(b bus.Bus, cfg Config) (*directory, error) {
	if cfg.SkipRegistryCheck {
		return nil, nil
	}
	if cfg.Registry != nil {
		return &directory{w: cfg.Registry}, nil
	}
	w, err := registry.NewWatcher(b, registry.WatcherConfig{Logger: cfg.Logger})
	if errors.Is(err, registry.ErrNoStore) {
		cfg.Logger.Debug("client: calls are not checked against the registry: the bus has none")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &directory{w: w, owned: true}, nil
}

// wrap checks every invocation before next sends it.
// A service hosted in this process (local) is not checked: its replica
// here answers, and the registry may not have seen it announce yet.
func (d *directory) wrap(next Invoker, local LocalServices) Invoker {
	if d == nil {
		return next
	}
	return func(ctx context.Context, inv *Invocation) (json.RawMessage, error) {
		if local != nil && local.Hosts(inv.Service) {
			return next(ctx, inv)
		}
		if err := d.w.Check(ctx, inv.Service, inv.Name, inv.Async); err != nil {
			return nil, err
		}
		return next(ctx, inv)
	}
}

func (d *directory) close() {
	if d != nil && d.owned {
		d.w.Close()
	}
}
