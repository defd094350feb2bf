// Package meshview reads the registry for the CLI and writes what
// `fnmesh ls`, `fnmesh describe` and `fnmesh top` show.
package meshview

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/fnmesh/fnmesh/registry"
)

// Service is one service as the CLI shows it.
type Service struct {
	View      *registry.ServiceView
	Queue     registry.Queue
	Conflicts []registry.Conflict
	QueueErr  error
}

// Read reads every service in the registry (or only those named).
func Read(ctx context.Context, store registry.Store, only ...string) ([]Service, error) {
	names := only
	if len(names) == 0 {
		var err error
		if names, err = store.Services(ctx); err != nil {
			return nil, fmt.Errorf("read the registry: %w", err)
		}
	}
	out := make([]Service, 0, len(names))
	for _, name := range names {
		v, err := store.Service(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("read service %s: %w", name, err)
		}
		s := Service{View: v, Conflicts: v.Conflicts()}
		s.Queue, s.QueueErr = store.Queue(ctx, name)
		out = append(out, s)
	}
	return out, nil
}

// ---- ls

type lsReplica struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid,omitempty"`
	Version   string    `json:"version,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Expires   time.Time `json:"expires"`
	Functions []string  `json:"functions"`
	// Process is host:pid; Colocated the services hosted with it there,
	// whose calls to it stay in-process (empty: reached through the bus
	// only).
	Process   string   `json:"process"`
	Colocated []string `json:"colocated,omitempty"`
	// Breaking lists functions whose request schema on this replica
	// breaks the one older live replicas serve.
	Breaking []registry.Conflict `json:"breaking,omitempty"`
}

type lsService struct {
	Name      string         `json:"name"`
	Replicas  []lsReplica    `json:"replicas"`
	Functions []string       `json:"functions"` // served by live replicas
	Known     []string       `json:"known"`     // served lately
	Queue     registry.Queue `json:"queue"`
	// Partial lists unversioned functions some live replicas lack: calls
	// that reach those replicas fail with not_found.
	Partial []string `json:"partial,omitempty"`
}

func lsOf(s Service) lsService {
	v := s.View
	out := lsService{Name: v.Name, Functions: v.Functions(), Known: v.Known, Queue: s.Queue, Replicas: []lsReplica{}}
	if out.Known == nil {
		out.Known = []string{}
	}
	for _, r := range v.Replicas {
		lr := lsReplica{ID: r.ID, Host: r.Host, PID: r.PID, Version: r.Version, StartedAt: r.StartedAt, Expires: r.Expires,
			Process: process(r), Colocated: r.Colocated}
		for _, f := range r.Functions {
			lr.Functions = append(lr.Functions, f.Name)
		}
		for _, c := range s.Conflicts {
			if c.Replica == r.ID {
				lr.Breaking = append(lr.Breaking, c)
			}
		}
		out.Replicas = append(out.Replicas, lr)
	}
	for _, fn := range out.Functions {
		if strings.Contains(fn, "@") {
			continue // a stream of its own: only its replicas read it
		}
		for _, r := range v.Replicas {
			if _, ok := r.Function(fn); !ok {
				out.Partial = append(out.Partial, fn)
				break
			}
		}
	}
	return out
}

// WriteLS writes services as `fnmesh ls` shows them.
func WriteLS(w io.Writer, services []Service, asJSON bool, now time.Time) error {
	list := make([]lsService, len(services))
	for i, s := range services {
		list[i] = lsOf(s)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no services in the registry")
		return nil
	}
	for i, s := range list {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  %d %s  backlog %d  pending %d  dead letters %d\n", s.Name, len(s.Replicas), plural(len(s.Replicas), "replica"), s.Queue.Backlog, s.Queue.Pending, s.Queue.DeadLetters)
		if services[i].QueueErr != nil {
			fmt.Fprintf(w, "  (queue unreadable: %v)\n", services[i].QueueErr)
		}
		if len(s.Replicas) == 0 {
			fmt.Fprintf(w, "  no live replica; served lately: %s\n", wrapList(s.Known, 60, "    "))
			continue
		}
		fmt.Fprintf(w, "  functions: %s\n", wrapList(s.Functions, 65, "             "))
		if len(s.Partial) > 0 {
			fmt.Fprintf(w, "  ! not on every replica (version them, name@v2): %s\n", strings.Join(s.Partial, ", "))
		}
		for _, r := range s.Replicas {
			mark := " "
			if len(r.Breaking) > 0 {
				mark = "!"
			}
			version := r.Version
			if version == "" {
				version = "-"
			}
			fmt.Fprintf(w, "  %s %-30s %-16s %-8s up %s\n", mark, trunc(r.ID, 30), trunc(r.Host, 16), trunc(version, 8), age(now.Sub(r.StartedAt)))
			fmt.Fprintf(w, "      process %s, %s\n", r.Process, how(r.Colocated))
			for _, c := range r.Breaking {
				fmt.Fprintf(w, "      breaking %s vs %s: %s\n", c.Function, trunc(c.Baseline, 24), summary(c.Changes))
			}
		}
	}
	return nil
}

// process names a replica's process, host:pid.
func process(r registry.Replica) string {
	if r.PID == 0 {
		return r.Host
	}
	return fmt.Sprintf("%s:%d", r.Host, r.PID)
}

// how says how callers reach a replica.
func how(colocated []string) string {
	if len(colocated) == 0 {
		return "remote: reached through the bus"
	}
	return "co-located with " + strings.Join(colocated, ", ") + ": in-process for them, through the bus for others"
}

func summary(changes []registry.Change) string {
	var parts []string
	for _, c := range changes {
		if c.Breaking {
			parts = append(parts, c.Path+" "+string(c.Kind))
		}
	}
	return strings.Join(parts, ", ")
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "~"
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// wrapList joins items with ", " and wraps lines at width.
func wrapList(items []string, width int, indent string) string {
	if len(items) == 0 {
		return "(none)"
	}
	var b strings.Builder
	line := 0
	for i, it := range items {
		piece := it
		if i < len(items)-1 {
			piece += ","
		}
		if line > 0 && line+1+len(piece) > width {
			b.WriteString("\n" + indent)
			line = 0
		} else if line > 0 {
			b.WriteString(" ")
			line++
		}
		b.WriteString(piece)
		line += len(piece)
	}
	return b.String()
}

// ---- describe

type describedFunction struct {
	Name     string   `json:"name"`
	Access   string   `json:"access,omitempty"`
	Replicas []string `json:"replicas"`
	// Processes says, per replica, which process serves it and how
	// (co-located or remote).
	Processes []string        `json:"processes"`
	Request   json.RawMessage `json:"request"`
	Response  json.RawMessage `json:"response"`
	// Variants counts distinct request schemas among live replicas.
	Variants int `json:"variants"`
}

// ErrNoSuchFunction is returned by WriteDescribe for a function no live
// replica serves.
type ErrNoSuchFunction struct{ Service, Function string }

func (e ErrNoSuchFunction) Error() string {
	return fmt.Sprintf("no live replica of %s serves %s", e.Service, e.Function)
}

// WriteDescribe writes the schemas of a service's functions (or of one),
// or with diff the differences between the schemas live replicas serve.
func WriteDescribe(w io.Writer, s Service, function string, asJSON, diff bool) error {
	v := s.View
	names := v.Functions()
	if function != "" {
		if !v.Serves(function) {
			return ErrNoSuchFunction{v.Name, function}
		}
		names = []string{function}
	}
	if len(names) == 0 {
		return fmt.Errorf("no live replica of service %s", v.Name)
	}
	if diff {
		return writeDiff(w, v, names, asJSON)
	}
	var fns []describedFunction
	for _, name := range names {
		d := describedFunction{Name: name, Replicas: []string{}, Processes: []string{}}
		schemas := map[string]bool{}
		for _, r := range v.Replicas {
			f, ok := r.Function(name)
			if !ok {
				continue
			}
			if d.Request == nil { // the oldest replica's
				d.Request, d.Response, d.Access = f.Request, f.Response, f.Access
			}
			d.Replicas = append(d.Replicas, r.ID)
			d.Processes = append(d.Processes, process(r)+" ("+how(r.Colocated)+")")
			schemas[string(f.Request)] = true
		}
		d.Variants = len(schemas)
		fns = append(fns, d)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"service": v.Name, "functions": fns})
	}
	for i, d := range fns {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s.%s\n", v.Name, d.Name)
		fmt.Fprintf(w, "  access:   %s\n", d.Access)
		fmt.Fprintf(w, "  replicas: %d (%s)\n", len(d.Replicas), strings.Join(d.Replicas, ", "))
		for i, p := range d.Processes {
			fmt.Fprintf(w, "    %s: process %s\n", d.Replicas[i], p)
		}
		if d.Variants > 1 {
			fmt.Fprintf(w, "  ! %d different request schemas among live replicas: fnmesh describe --diff %s.%s\n", d.Variants, v.Name, d.Name)
		}
		fmt.Fprintf(w, "  request:\n%s\n", indentJSON(d.Request, "    "))
		fmt.Fprintf(w, "  response:\n%s\n", indentJSON(d.Response, "    "))
	}
	return nil
}

func writeDiff(w io.Writer, v *registry.ServiceView, names []string, asJSON bool) error {
	diffs, err := v.Diffs(names)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if diffs == nil {
			diffs = []registry.Diff{}
		}
		return enc.Encode(map[string]any{"service": v.Name, "diffs": diffs})
	}
	if len(diffs) == 0 {
		fmt.Fprintf(w, "all live replicas of %s serve the same request schemas\n", v.Name)
		return nil
	}
	for _, d := range diffs {
		verdict := "compatible"
		if d.Breaking {
			verdict = "BREAKING"
		}
		fmt.Fprintf(w, "%s.%s on %s vs %s (oldest): %s\n", v.Name, d.Function, d.Replica, d.Baseline, verdict)
		for _, c := range d.Changes {
			sign := " "
			switch {
			case c.Breaking:
				sign = "!"
			case c.Kind == registry.Added || c.Kind == registry.Optional:
				sign = "+"
			}
			fmt.Fprintf(w, "  %s %s\n", sign, c)
		}
	}
	return nil
}

func indentJSON(raw json.RawMessage, indent string) string {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return indent + string(raw)
	}
	delete(asMap(v), "$schema")
	b, _ := json.MarshalIndent(v, indent, "  ")
	return indent + string(b)
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// SortServices orders services by name.
func SortServices(s []Service) {
	sort.Slice(s, func(i, j int) bool { return s[i].View.Name < s[j].View.Name })
}
