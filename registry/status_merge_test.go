package registry

import "testing"

// News of one request not yet written is merged into one record: what a
// replica says replaces a caller's queued and is never replaced by it,
// dead_lettered is final, and otherwise the later state wins.
func TestStatusRecordsMerge(t *testing.T) {
	queued := statusWrite{id: "r", queued: true, service: "math", function: "add"}
	upd := func(state string) statusWrite { return statusWrite{id: "r", st: Status{ID: "r", State: state}} }
	tests := []struct {
		name        string
		first, then statusWrite
		want        string // the state written
	}{
		{"running then done", upd(StateRunning), upd(StateDone), StateDone},
		{"queued then running", queued, upd(StateRunning), StateRunning},
		{"running then a caller's queued", upd(StateRunning), queued, StateRunning},
		{"dead_lettered stays", upd(StateDeadLettered), upd(StateRunning), StateDeadLettered},
		{"handed back", upd(StateRunning), upd(StateQueued), StateQueued},
	}
	for _, tt := range tests {
		w := tt.first
		w.merge(tt.then)
		got := w.st.State
		if w.queued {
			got = StateQueued
		}
		if got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}
