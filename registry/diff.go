package registry

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// ChangeKind classifies one difference between two request schemas.
type ChangeKind string

// The kinds of change. Removed, Retyped and Required break callers
// written against the old schema; the others do not.
const (
	Removed  ChangeKind = "removed"  // a field the old schema had is gone
	Retyped  ChangeKind = "retyped"  // a field's type changed
	Required ChangeKind = "required" // a field became required (or a new field is required)
	Added    ChangeKind = "added"    // a new optional field
	Optional ChangeKind = "optional" // a required field became optional
	Rules    ChangeKind = "rules"    // validation rules changed (shown, not judged)
)

// Change is one difference at Path ("" for the arguments themselves,
// "items[].qty" inside a list).
type Change struct {
	Path     string     `json:"path"`
	Kind     ChangeKind `json:"kind"`
	Old      string     `json:"old,omitempty"`
	New      string     `json:"new,omitempty"`
	Breaking bool       `json:"breaking"`
}

func (c Change) String() string {
	path := c.Path
	if path == "" {
		path = "(arguments)"
	}
	s := fmt.Sprintf("%s %s", path, c.Kind)
	switch {
	case c.Old != "" && c.New != "":
		s += fmt.Sprintf(": %s -> %s", c.Old, c.New)
	case c.New != "":
		s += ": " + c.New
	case c.Old != "":
		s += ": was " + c.Old
	}
	if c.Breaking {
		s += " (breaking)"
	}
	return s
}

// Breaking reports whether any change breaks old callers.
func Breaking(changes []Change) bool {
	return slices.ContainsFunc(changes, func(c Change) bool { return c.Breaking })
}

// DiffSchemas compares the request schema that callers were written
// against (old) with a new one, as produced by Schema. A change breaks
// old callers when a field they send is removed or retyped, or when a
// field they may leave out becomes required.
func DiffSchemas(old, new json.RawMessage) ([]Change, error) {
	var o, n obj
	if err := json.Unmarshal(old, &o); err != nil {
		return nil, fmt.Errorf("registry: old schema: %w", err)
	}
	if err := json.Unmarshal(new, &n); err != nil {
		return nil, fmt.Errorf("registry: new schema: %w", err)
	}
	var out []Change
	diff("", o, n, &out)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func typeName(s obj) string {
	t, _ := s["type"].(string)
	if t == "" {
		return "any"
	}
	if t == "array" {
		if it, ok := s["items"].(obj); ok {
			return "array of " + typeName(it)
		}
	}
	return t
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func diff(path string, o, n obj, out *[]Change) {
	ot, nt := typeName(o), typeName(n)
	if ot != nt {
		// Widening to "any" accepts everything old callers sent.
		*out = append(*out, Change{Path: path, Kind: Retyped, Old: ot, New: nt, Breaking: nt != "any"})
		return
	}
	if ov, nv := str(o["x-validate"]), str(n["x-validate"]); ov != nv {
		*out = append(*out, Change{Path: path, Kind: Rules, Old: ov, New: nv})
	}
	switch nt {
	case "object":
		op, _ := o["properties"].(obj)
		np, _ := n["properties"].(obj)
		oreq, nreq := strSet(o["required"]), strSet(n["required"])
		names := map[string]bool{}
		for k := range op {
			names[k] = true
		}
		for k := range np {
			names[k] = true
		}
		for k := range names {
			p := join(path, k)
			os, inOld := op[k].(obj)
			ns, inNew := np[k].(obj)
			switch {
			case inOld && !inNew:
				*out = append(*out, Change{Path: p, Kind: Removed, Old: typeName(os), Breaking: true})
			case !inOld && inNew && nreq[k]:
				*out = append(*out, Change{Path: p, Kind: Required, New: typeName(ns) + " (new)", Breaking: true})
			case !inOld && inNew:
				*out = append(*out, Change{Path: p, Kind: Added, New: typeName(ns)})
			default:
				if nreq[k] && !oreq[k] {
					*out = append(*out, Change{Path: p, Kind: Required, Breaking: true})
				}
				if oreq[k] && !nreq[k] {
					*out = append(*out, Change{Path: p, Kind: Optional})
				}
				diff(p, os, ns, out)
			}
		}
		oa, _ := o["additionalProperties"].(obj)
		na, _ := n["additionalProperties"].(obj)
		if oa != nil && na != nil {
			diff(path+"{}", oa, na, out)
		}
	case "array":
		oi, _ := o["items"].(obj)
		ni, _ := n["items"].(obj)
		if oi != nil && ni != nil {
			diff(path+"[]", oi, ni, out)
		}
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func strSet(v any) map[string]bool {
	out := map[string]bool{}
	list, _ := v.([]any)
	for _, x := range list {
		if s, ok := x.(string); ok {
			out[s] = true
		}
	}
	return out
}

// FormatChanges writes changes one per line, indented.
func FormatChanges(changes []Change, indent string) string {
	var b strings.Builder
	for _, c := range changes {
		b.WriteString(indent + c.String() + "\n")
	}
	return b.String()
}
