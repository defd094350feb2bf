// Package placement decides which services run in this process. A
// program registers every service it can run; a list given at start
// (a flag, FNMESH_LOCAL, or a file) says which of them this process
// hosts. A hosted service runs a replica here, on the bus like any
// replica (other processes reach it through Redis, and the registry
// lists it), and callers in this process that use the Process as their
// client.Config.Local reach it in-process, without the bus.
//
// Moving a service out is a change of configuration: start its replicas
// elsewhere and drop it from the list; callers do not change.
//
//	p, err := placement.New(placement.Config{Local: placement.Resolve(flagValue, fileValue)}, checkout, pricing, mail)
//	c, err := client.New(b, client.Config{Local: p})
//	err = p.Run(ctx, b)
package placement

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
)

// EnvLocal lists the services a process hosts, comma-separated, when no
// flag says it: FNMESH_LOCAL=math,mail.
const EnvLocal = "FNMESH_LOCAL"

// EnvLocalFile names a file listing them, when neither the flag nor
// FNMESH_LOCAL is set.
const EnvLocalFile = "FNMESH_LOCAL_FILE"

// EnvInline lists hosted services whose co-located calls run on their
// caller's goroutine, when no flag says it: FNMESH_INLINE=pricing.
const EnvInline = "FNMESH_INLINE"

// Config configures a Process.
type Config struct {
	// Local lists the services this process hosts. Default nil: every
	// service given to New. An empty, non-nil list hosts none (a pure
	// caller).
	Local []string
	// Inline lists hosted services whose co-located calls all run on
	// their caller's goroutine, as if each function were registered with
	// handlers.Inline: a plain function call, whose caller waits for the
	// function to return (docs/PLACEMENT.md says what that gives up).
	// Default none: only functions registered Inline run so.
	Inline []string
}

// Process is the set of services a program registers and the subset it
// hosts. It implements client.LocalServices.
type Process struct {
	registered map[string]*handlers.Service
	hosted     map[string]*handlers.Service // read-only after New
	names      []string                     // hosted, sorted
	inline     map[string]bool              // Config.Inline; read-only after New
}

var _ client.LocalServices = (*Process)(nil)

// New returns the placement of services in this process. It fails, naming
// them, when cfg.Local lists a service that is not among services: a
// process never claims to host what it cannot run.
func New(cfg Config, services ...*handlers.Service) (*Process, error) {
	p := &Process{registered: map[string]*handlers.Service{}, hosted: map[string]*handlers.Service{}}
	for _, s := range services {
		if s == nil {
			return nil, errors.New("placement: a nil service was given")
		}
		if p.registered[s.Name()] != nil {
			return nil, fmt.Errorf("placement: service %s given twice", s.Name())
		}
		p.registered[s.Name()] = s
	}
	local := cfg.Local
	if local == nil {
		for name := range p.registered {
			local = append(local, name)
		}
	}
	var unknown []string
	for _, name := range local {
		s := p.registered[name]
		if s == nil {
			unknown = append(unknown, name)
			continue
		}
		p.hosted[name] = s
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("placement: asked to host %s, which this program does not register (it registers: %s)",
			strings.Join(unknown, ", "), strings.Join(p.Registered(), ", "))
	}
	p.inline = map[string]bool{}
	for _, name := range cfg.Inline {
		if p.hosted[name] == nil {
			unknown = append(unknown, name)
		}
		p.inline[name] = true
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("placement: asked to run %s inline, which this process does not host (it hosts: %s)",
			strings.Join(unknown, ", "), strings.Join(slices.Sorted(maps.Keys(p.hosted)), ", "))
	}
	for name := range p.hosted {
		p.names = append(p.names, name)
	}
	sort.Strings(p.names)
	for _, s := range p.hosted {
		s.SetColocated(p.names)
	}
	return p, nil
}

// Registered lists the services the program registers, sorted.
func (p *Process) Registered() []string {
	names := make([]string, 0, len(p.registered))
	for n := range p.registered {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Hosted lists the services this process hosts, sorted.
func (p *Process) Hosted() []string { return slices.Clone(p.names) }

// Hosts implements client.LocalServices.
func (p *Process) Hosts(service string) bool { return p.hosted[service] != nil }

// Dispatch implements client.LocalServices.
func (p *Process) Dispatch(ctx context.Context, service string, req *bus.Request, deliver func(*bus.Reply)) error {
	s := p.hosted[service]
	if s == nil {
		return handlers.ErrNotServedHere
	}
	if p.inline[service] {
		return s.DispatchInline(ctx, req, deliver)
	}
	return s.Dispatch(ctx, req, deliver)
}

// Inline reports whether a call of function of service runs on its
// caller's goroutine (handlers.Inline): the client then needs no place
// for it among the calls waiting for a reply.
func (p *Process) Inline(service, function string) bool {
	s := p.hosted[service]
	return s != nil && (p.inline[service] || s.Inline(function))
}

// Run runs one replica of each hosted service on b until ctx ends, then
// drains them (handlers.Service.Run). It returns once all have stopped,
// with the first error; if one fails to start, the others are stopped.
func (p *Process) Run(ctx context.Context, b bus.Bus) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(p.names))
	for i, name := range p.names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.hosted[name].Run(ctx, b); err != nil {
				errs[i] = err
				cancel()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Started is closed once every hosted service has a replica serving.
func (p *Process) Started(ctx context.Context) error {
	for _, name := range p.names {
		select {
		case <-p.hosted[name].Started():
		case <-ctx.Done():
			return fmt.Errorf("placement: %s did not start: %w", name, ctx.Err())
		}
	}
	return nil
}

// ResolveInline returns the services whose co-located calls run on their
// caller's goroutine (Config.Inline) from a flag's value (e.g. --inline
// pricing), else FNMESH_INLINE. Nil when neither is set.
func ResolveInline(flagValue string) []string {
	if flagValue == "" {
		flagValue = os.Getenv(EnvInline)
	}
	if flagValue == "" {
		return nil
	}
	return ParseList(flagValue)
}

// ParseList parses a comma- or space-separated list of service names.
// Duplicates are dropped; an empty string is an empty list.
func ParseList(s string) []string {
	out := []string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// LoadFile reads a list of services from a file: names separated by
// commas, spaces or lines; '#' starts a comment.
func LoadFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("placement: %w", err)
	}
	defer f.Close()
	var all []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		all = append(all, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("placement: read %s: %w", path, err)
	}
	return ParseList(strings.Join(all, ",")), nil
}

// Resolve returns the services to host from, in this order: a flag's
// value (e.g. --local math,mail), FNMESH_LOCAL, a file named by a flag
// (e.g. --local-file) or FNMESH_LOCAL_FILE. Nil when none is set: host
// every registered service. "-" as flag or variable hosts none.
func Resolve(flagValue, file string) ([]string, error) {
	list := func(v string) []string {
		if strings.TrimSpace(v) == "-" {
			return []string{}
		}
		return ParseList(v)
	}
	if flagValue != "" {
		return list(flagValue), nil
	}
	if v, ok := os.LookupEnv(EnvLocal); ok && v != "" {
		return list(v), nil
	}
	if file == "" {
		file = os.Getenv(EnvLocalFile)
	}
	if file != "" {
		return LoadFile(file)
	}
	return nil, nil
}
