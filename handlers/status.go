package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/registry"
)

// statusRecorder keeps the status records of the sends a replica runs
// (registry.StatusStore): running, done, dead-lettered, handed back.
// Calls are not recorded: their caller waits for the reply. A record that
// cannot be written is logged, never fails the request. nil records
// nothing.
type statusRecorder struct {
	store   registry.StatusStore
	ttl     time.Duration
	service string
	replica string
	log     *slog.Logger
}

func newStatusRecorder(s *Service, b bus.Bus, replica string, log *slog.Logger) *statusRecorder {
	if s.cfg.StatusTTL < 0 {
		return nil
	}
	store, err := registry.StatusStoreFor(b)
	if err != nil {
		return nil
	}
	return &statusRecorder{store: store, ttl: s.cfg.StatusTTL, service: s.name, replica: replica, log: log}
}

func (r *statusRecorder) update(st registry.Status) {
	st.Service, st.Replica = r.service, r.replica
	// The Redis store writes in the background and returns at once.
	if err := r.store.Update(context.Background(), st, r.ttl); err != nil {
		r.log.Debug("status record not written", "id", st.ID, "err", err)
	}
}

// flush waits, a little, for records written in the background
// (registry.RedisStatusStore) before the replica is gone.
func (r *statusRecorder) flush() {
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.store.Flush(ctx)
}

// running records that this replica runs the send req.
func (r *statusRecorder) running(req *Request) {
	if r == nil || !req.Async {
		return
	}
	r.update(registry.Status{ID: req.ID, State: registry.StateRunning, Function: req.Function, Attempt: req.Attempt})
}

// settled records how handling the send req ended: err nil is done (or
// dead-lettered, which deadLettered recorded first and stays), else the
// request was handed back and waits again.
func (r *statusRecorder) settled(req *Request, err error) error {
	if r == nil || !req.Async {
		return err
	}
	state := registry.StateDone
	if err != nil {
		state = registry.StateQueued
	}
	r.update(registry.Status{ID: req.ID, State: state, Function: req.Function, Attempt: req.Attempt})
	return err
}

// deadLettered records that the send in msg went to the dead letters.
func (r *statusRecorder) deadLettered(msg *message.Message, e *fnmesh.Error, attempts int) {
	if r == nil || msg.Metadata[bus.FieldReplyTo] != "" || msg.Metadata[bus.FieldID] == "" {
		return
	}
	r.update(registry.Status{ID: msg.Metadata[bus.FieldID], State: registry.StateDeadLettered,
		Function: msg.Metadata[bus.FieldFunction], Attempt: attempts, Code: string(e.Code), Reason: e.Message})
}
