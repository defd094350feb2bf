// Package registry is the mesh's discovery: every replica announces
// itself (service, replica id, host, version, its functions with their
// JSON Schemas, started-at) and keeps the record alive with a heartbeat
// that also carries compact per-function statistics; a replica that
// stops heartbeating drops out within its TTL (5 s by default). Callers
// read it through a Watcher, a cached and refreshed view whose
// Interceptor fails calls at once with not_found (no such function) or
// unavailable (known, but no live replica) instead of waiting for their
// deadline.
//
// On Redis every key of a service carries the service's hash tag, so in
// a cluster a service's registry, requests and dead letters share a slot:
//
//	fnmesh:{SERVICE}:replicas  hash   replica id -> JSON record (functions, schemas)
//	fnmesh:{SERVICE}:beats     zset   replica id -> expiry (Unix ms, server clock)
//	fnmesh:{SERVICE}:stats     hash   replica id -> JSON statistics, per heartbeat
//	fnmesh:{SERVICE}:known     hash   function -> last time a replica served it (Unix ms)
//	fnmesh:services            zset   service -> last heartbeat (Unix ms)
//
// Each heartbeat removes the records of replicas whose expiry passed and
// renews every key's TTL (KnownFor, 24 h), so keys never grow with calls
// or restarts. On the in-memory bus the same records live in the process,
// with the same semantics.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/fnmesh/fnmesh/bus"
)

// Replica is one replica's record.
type Replica struct {
	Service   string     `json:"service"`
	ID        string     `json:"id"`
	Host      string     `json:"host"`
	PID       int        `json:"pid,omitempty"`
	Version   string     `json:"version,omitempty"`
	StartedAt time.Time  `json:"started_at"`
	Functions []Function `json:"functions"`
	// Colocated lists the services hosted in the replica's process, its
	// own included, when a placement.Process runs it: callers in that
	// process reach it in-process, everyone else through the bus. Empty
	// for a replica run on its own.
	Colocated []string `json:"colocated,omitempty"`

	// Set when read back from the registry.
	Expires time.Time `json:"expires,omitzero"` // dropped after this, unless it heartbeats
	Stats   Stats     `json:"stats,omitzero"`   // as of its last heartbeat
}

// Function describes one function a replica serves.
type Function struct {
	Name     string          `json:"name"`
	Access   string          `json:"access,omitempty"` // who may call it (handlers.FunctionInfo.Access)
	Request  json.RawMessage `json:"request"`          // JSON Schema of the arguments
	Response json.RawMessage `json:"response"`         // JSON Schema of the result
}

// Function returns the replica's function called name.
func (r *Replica) Function(name string) (Function, bool) {
	for _, f := range r.Functions {
		if f.Name == name {
			return f, true
		}
	}
	return Function{}, false
}

// Stats are a replica's counters as of a heartbeat, cumulative since it
// started. Readers turn two snapshots into rates (see fnmesh top).
type Stats struct {
	At        time.Time                `json:"at,omitzero"`
	Functions map[string]FunctionStats `json:"fn,omitempty"`
}

// IsZero reports whether s holds nothing.
func (s Stats) IsZero() bool { return s.At.IsZero() && len(s.Functions) == 0 }

// FunctionStats count one function's calls on one replica.
type FunctionStats struct {
	Calls    uint64 `json:"c"`           // finished runs
	Errors   uint64 `json:"e,omitempty"` // runs that returned an error
	InFlight int64  `json:"f,omitempty"` // running now
	// Latency counts runs per bucket: Latency[i] counts runs that took at
	// most LatencyBounds[i] (and more than the bound before); the last
	// element counts the rest.
	Latency []uint64 `json:"h,omitempty"`
}

// LatencyBounds are the upper bounds, in seconds, of the latency
// buckets replicas report (the same as the Prometheus histograms').
var LatencyBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// StatsSource gives the statistics a replica reports with its heartbeat.
type StatsSource interface {
	ReplicaStats(service string) map[string]FunctionStats
}

// Queue is a service's request stream as the registry sees it.
type Queue struct {
	Backlog     int64 `json:"backlog"`      // requests no replica has taken yet
	Pending     int64 `json:"pending"`      // taken, not yet acknowledged (running)
	DeadLetters int64 `json:"dead_letters"` // entries on the dead-letter stream
}

// Store keeps the registry. NewRedisStore and the in-memory store (for a
// bus.Memory) implement it; StoreFor picks the one for a bus.
type Store interface {
	// Announce writes r's record and its first heartbeat; r expires ttl
	// from now unless it heartbeats.
	Announce(ctx context.Context, r *Replica, ttl, keep time.Duration) error
	// Heartbeat extends the replica's life by ttl, stores its stats and
	// removes the records of expired replicas of the service. It returns
	// false when the record is gone (expired, or the store was emptied):
	// the replica must announce again.
	Heartbeat(ctx context.Context, service, id string, functions []string, stats Stats, ttl, keep time.Duration) (bool, error)
	// Leave removes the replica's record at once.
	Leave(ctx context.Context, service, id string) error
	// Services lists services with a heartbeat in the last keep period.
	Services(ctx context.Context) ([]string, error)
	// Service returns the live replicas of service and the functions that
	// were served in the last keep period.
	Service(ctx context.Context, service string) (*ServiceView, error)
	// Queue returns the backlog, pending and dead letters of service.
	Queue(ctx context.Context, service string) (Queue, error)
}

// ErrNoStore is returned by StoreFor for a bus it has no store for.
var ErrNoStore = errors.New("registry: no store for this bus")

// StoreFor returns the registry store that lives with b: Redis keys for
// a *bus.Redis, in-process records for a *bus.Memory.
func StoreFor(b bus.Bus) (Store, error) {
	switch x := b.(type) {
	case *bus.Redis:
		return NewRedisStore(x.Client()), nil
	case *bus.Memory:
		return memoryStoreFor(x), nil
	}
	return nil, fmt.Errorf("%w: %T", ErrNoStore, b)
}

// ServiceView is what the registry knows of one service.
type ServiceView struct {
	Name     string    `json:"name"`
	Replicas []Replica `json:"replicas"` // live, oldest first
	// Known lists functions served in the last keep period, live or not.
	Known []string `json:"known"`
}

// Serves reports whether a live replica serves function.
func (v *ServiceView) Serves(function string) bool {
	for i := range v.Replicas {
		if _, ok := v.Replicas[i].Function(function); ok {
			return true
		}
	}
	return false
}

// Knows reports whether function was served recently.
func (v *ServiceView) Knows(function string) bool {
	for _, k := range v.Known {
		if k == function {
			return true
		}
	}
	return v.Serves(function)
}

// Functions lists the functions live replicas serve, sorted.
func (v *ServiceView) Functions() []string {
	set := map[string]bool{}
	for _, r := range v.Replicas {
		for _, f := range r.Functions {
			set[f.Name] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Conflict is a replica serving a function with a request schema that
// breaks callers of the same function on an older replica (the
// baseline).
type Conflict struct {
	Function string   `json:"function"`
	Replica  string   `json:"replica"`
	Baseline string   `json:"baseline"`
	Changes  []Change `json:"changes"`
}

// Diff is a replica serving a function with a request schema that
// differs from the one the oldest live replica serving it has (the
// baseline).
type Diff struct {
	Function string   `json:"function"`
	Baseline string   `json:"baseline"`
	Replica  string   `json:"replica"`
	Breaking bool     `json:"breaking"`
	Changes  []Change `json:"changes"`
}

// Diffs compares, for each of functions, every live replica's request
// schema with the baseline's. A schema that cannot be compared is left
// out and its error returned (the first one), with the other diffs.
func (v *ServiceView) Diffs(functions []string) ([]Diff, error) {
	var out []Diff
	var firstErr error
	for _, fn := range functions {
		var base *Replica
		var baseFn Function
		for i := range v.Replicas { // oldest first
			r := &v.Replicas[i]
			f, ok := r.Function(fn)
			if !ok {
				continue
			}
			if base == nil {
				base, baseFn = r, f
				continue
			}
			if string(f.Request) == string(baseFn.Request) {
				continue
			}
			changes, err := DiffSchemas(baseFn.Request, f.Request)
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			out = append(out, Diff{Function: fn, Baseline: base.ID, Replica: r.ID, Breaking: Breaking(changes), Changes: changes})
		}
	}
	return out, firstErr
}

// Conflicts returns the replicas whose request schema for a function
// breaks callers of the baseline's (Diffs, breaking ones only).
func (v *ServiceView) Conflicts() []Conflict {
	diffs, _ := v.Diffs(v.Functions())
	var out []Conflict
	for _, d := range diffs {
		if d.Breaking {
			out = append(out, Conflict{Function: d.Function, Replica: d.Replica, Baseline: d.Baseline, Changes: d.Changes})
		}
	}
	return out
}

func sortReplicas(rs []Replica) {
	sort.Slice(rs, func(i, j int) bool {
		if !rs[i].StartedAt.Equal(rs[j].StartedAt) {
			return rs[i].StartedAt.Before(rs[j].StartedAt)
		}
		return rs[i].ID < rs[j].ID
	})
}

func sortStrings(s []string) { sort.Strings(s) }
