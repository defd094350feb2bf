package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"

	"github.com/fnmesh/fnmesh/bus"
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
type ReplicaInfo struct {
	Service   string
	Replica   string
	Bus       bus.Bus
	Functions []FunctionInfo
	Logger    *slog.Logger
	// Colocated lists the services hosted in this process, this one
	// included, when a placement.Process runs it: callers here reach
	// them in-process. Nil for a replica run on its own.
	Colocated []string
}

// FunctionInfo describes one registered function.
type FunctionInfo struct {
	Name string
	In   reflect.Type // the argument type
	Out  reflect.Type // the result type
	// Access says who may call it: "open" (no token check), "token" (any
	// valid token), "public" (with or without a token), or the policy's
	// rule, e.g. "match(claims.roles contains \"admin\")". "+claims"
	// marks RequireRole/RequireClaims checks on top.
	Access string
}

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
	for _, p := range s.cfg.Plugins {
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

func validatePlugins(ps []Plugin) error {
	for i, p := range ps {
		if p == nil {
			return errors.New("handlers: Config.Plugins[" + fmt.Sprint(i) + "] is nil")
		}
	}
	return nil
}
