package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/fnmesh/fnmesh/bus"
)

// ReplicaInfo describes a running replica (handlers.ReplicaInfo is the
// same type, given to every handlers.Plugin).
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

// Config configures an Announcer. Zero values take the defaults written
// on each field.
type Config struct {
	// Version of the service's code, shown by fnmesh ls.
	Version string
	// Heartbeat is how often a replica renews its record and reports its
	// statistics. Default 1s.
	Heartbeat time.Duration
	// TTL is how long a record outlives its last heartbeat: a replica
	// that stops (crash, SIGKILL, lost network) disappears this long
	// after its last heartbeat at most. Default 5s; at least 2 heartbeats.
	TTL time.Duration
	// KnownFor is how long a function stays known after the last replica
	// serving it vanished: calls to it fail with unavailable, not
	// not_found, and the registry's keys expire this long after the last
	// heartbeat of the service. Default 24h.
	KnownFor time.Duration
	// Stats, when set, gives the per-function counters each heartbeat
	// carries (telemetry.Metrics implements it); fnmesh top reads them.
	// telemetry.Metrics counts per process: run one replica of a service
	// per process, as deployments do, or each reports the process's sum.
	Stats StatsSource
	// Store overrides the store of the replica's bus (StoreFor).
	Store Store
}

func (c *Config) setDefaults() {
	if c.Heartbeat == 0 {
		c.Heartbeat = time.Second
	}
	if c.TTL == 0 {
		c.TTL = 5 * c.Heartbeat
	}
	if c.KnownFor == 0 {
		c.KnownFor = 24 * time.Hour
	}
}

// Validate reports every problem with c (after defaults).
func (c Config) Validate() error {
	var errs []error
	if c.Heartbeat <= 0 {
		errs = append(errs, fmt.Errorf("registry: Config.Heartbeat is %v, want more than 0", c.Heartbeat))
	}
	if c.TTL < 2*c.Heartbeat {
		errs = append(errs, fmt.Errorf("registry: Config.TTL is %v, want at least two heartbeats (%v)", c.TTL, 2*c.Heartbeat))
	}
	if c.KnownFor < c.TTL {
		errs = append(errs, fmt.Errorf("registry: Config.KnownFor is %v, want at least the TTL", c.KnownFor))
	}
	return errors.Join(errs...)
}

// Announcer is the handlers.Plugin that keeps a replica in the registry:
//
//	handlers.Config{Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{Version: "1.4.2"})}}
type Announcer struct {
	cfg Config
	err error
}

// NewAnnouncer returns the plugin; configuration problems are reported
// when a replica starts.
func NewAnnouncer(cfg Config) *Announcer {
	cfg.setDefaults()
	return &Announcer{cfg: cfg, err: cfg.Validate()}
}

// Record builds the registry record of a replica: its functions'
// schemas from their Go types.
func Record(info ReplicaInfo, version string) *Replica {
	host, _ := os.Hostname()
	r := &Replica{
		Service: info.Service, ID: info.Replica, Host: host, PID: os.Getpid(),
		Version: version, StartedAt: time.Now().UTC(), Colocated: info.Colocated,
	}
	for _, f := range info.Functions {
		r.Functions = append(r.Functions, Function{Name: f.Name, Access: f.Access, Request: Schema(f.In), Response: Schema(f.Out)})
	}
	return r
}

// StartReplica implements handlers.Plugin: it reports breaking changes
// against the live replicas, announces the replica and heartbeats until
// stop, which removes the record.
func (a *Announcer) StartReplica(ctx context.Context, info ReplicaInfo) (func(), error) {
	if a.err != nil {
		return nil, a.err
	}
	store := a.cfg.Store
	if store == nil {
		var err error
		if store, err = StoreFor(info.Bus); err != nil {
			return nil, err
		}
	}
	log := info.Logger
	if log == nil {
		log = slog.Default()
	}
	rec := Record(info, a.cfg.Version)
	if view, err := store.Service(ctx, info.Service); err == nil {
		reportBreaking(log, view, rec)
	}
	if err := store.Announce(ctx, rec, a.cfg.TTL, a.cfg.KnownFor); err != nil {
		return nil, fmt.Errorf("registry: announce %s/%s: %w", info.Service, info.Replica, err)
	}
	fns := make([]string, len(rec.Functions))
	for i, f := range rec.Functions {
		fns[i] = f.Name
	}
	stopc, done := make(chan struct{}), make(chan struct{})
	go a.heartbeat(store, rec, fns, log, stopc, done)
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stopc)
			<-done
			lctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := store.Leave(lctx, rec.Service, rec.ID); err != nil {
				log.Warn("registry: could not leave; the record expires by itself", "ttl", a.cfg.TTL, "err", err)
			}
		})
	}, nil
}

// reportBreaking logs, for each function of rec, the breaking
// differences with the oldest live replica serving it.
func reportBreaking(log *slog.Logger, view *ServiceView, rec *Replica) {
	for _, f := range rec.Functions {
		for i := range view.Replicas {
			other := &view.Replicas[i]
			of, ok := other.Function(f.Name)
			if !ok || other.ID == rec.ID {
				continue
			}
			changes, err := DiffSchemas(of.Request, f.Request)
			if err == nil && Breaking(changes) {
				log.Warn("breaking change: this replica's request schema is incompatible with a live replica's; version the function (name@v2) to run both",
					"function", rec.Service+"."+f.Name, "other_replica", other.ID, "other_version", other.Version,
					"changes", FormatChanges(changes, ""))
			}
			break // compare with the oldest only
		}
	}
}

func (a *Announcer) heartbeat(store Store, rec *Replica, fns []string, log *slog.Logger, stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		// A heartbeat that lands within the TTL still keeps the record:
		// give a slow one (a loaded machine, a busy Redis) that long.
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.TTL)
		var stats Stats
		if a.cfg.Stats != nil {
			stats = Stats{At: time.Now().UTC(), Functions: a.cfg.Stats.ReplicaStats(rec.Service)}
		}
		ok, err := store.Heartbeat(ctx, rec.Service, rec.ID, fns, stats, a.cfg.TTL, a.cfg.KnownFor)
		if err == nil && !ok {
			// Our record expired (a long pause, or the store was emptied).
			log.Info("registry: record gone, announcing again")
			err = store.Announce(ctx, rec, a.cfg.TTL, a.cfg.KnownFor)
		}
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			log.Warn("registry: heartbeat failed; retrying every heartbeat", "err", err)
		case err == nil && failing:
			failing = false
			log.Info("registry: heartbeat works again")
		}
	}
}
