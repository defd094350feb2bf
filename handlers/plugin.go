package handlers

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/fnmesh/fnmesh/registry"
)

// A Plugin runs beside every replica of a service: the registry's
// announcements and heartbeats, the metrics of the service's queue.
type Plugin interface {
	// StartReplica is called by Run once the replica reads requests and
	// before Started is closed. The stop it returns is called when the
	// replica begins to drain (or Run fails), before running requests
	// finish. An error stops the replica: Run returns it.
	StartReplica(ctx context.Context, r ReplicaInfo) (stop func(), err error)
}

// ReplicaInfo describes a running replica to plugins.
type ReplicaInfo = registry.ReplicaInfo

// FunctionInfo describes one registered function.
type FunctionInfo = registry.FunctionInfo

// FunctionInfos describes the registered functions, sorted by name.
func (s *Service) FunctionInfos() []FunctionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FunctionInfo, 0, len(s.funcs))
	for _, f := range s.funcs {
		out = append(out, FunctionInfo{Name: f.name, In: f.inType, Out: f.outType, Access: s.access(f)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (s *Service) access(f *function) string {
	var a string
	switch {
	case s.cfg.Policy != nil:
		r, isDefault := s.ruleFor(f)
		a = r.String()
		if isDefault {
			a += " (default)"
		}
	case s.cfg.Auth == nil:
		a = "open"
	case f.public:
		a = "public"
	default:
		a = "token"
	}
	if len(f.requires) > 0 {
		a += " +claims"
	}
	return a
}

// startPlugins starts every plugin for one replica; stop stops those
// started, in reverse order, once.
func (s *Service) startPlugins(ctx context.Context, info ReplicaInfo) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		stops = nil
	}
	for _, p := range s.plugins(info) {
		st, err := p.StartReplica(ctx, info)
		if err != nil {
			stop()
			return func() {}, fmt.Errorf("handlers: service %s: plugin %T: %w", s.name, p, err)
		}
		if st != nil {
			stops = append(stops, st)
		}
	}
	return stop, nil
}

// plugins returns the configured plugins, after the registry's
// announcer unless discovery is off, one is configured, or the bus has
// no registry (registry.StoreFor).
func (s *Service) plugins(info ReplicaInfo) []Plugin {
	if s.cfg.NoDiscovery {
		return s.cfg.Plugins
	}
	for _, p := range s.cfg.Plugins {
		if _, ok := p.(*registry.Announcer); ok {
			return s.cfg.Plugins
		}
	}
	if s.cfg.Discovery.Store == nil {
		if _, err := registry.StoreFor(info.Bus); errors.Is(err, registry.ErrNoStore) {
			info.Logger.Debug("not announced: the bus has no registry", "bus", fmt.Sprintf("%T", info.Bus))
			return s.cfg.Plugins
		}
	}
	return append([]Plugin{registry.NewAnnouncer(s.cfg.Discovery)}, s.cfg.Plugins...)
}

func validatePlugins(ps []Plugin) error {
	for i, p := range ps {
		if p == nil {
			return errors.New("handlers: Config.Plugins[" + fmt.Sprint(i) + "] is nil")
		}
	}
	return nil
}
