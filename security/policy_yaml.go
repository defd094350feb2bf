package security

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// PolicyError is a problem in a policy document, with where it is.
type PolicyError struct {
	Source string // file name, or "" for a document given as bytes
	Line   int    // 1-based; 0 when unknown
	Path   string // e.g. "functions.transfer.and[1].match"
	Msg    string
}

func (e *PolicyError) Error() string {
	var b strings.Builder
	b.WriteString("policy")
	if e.Source != "" {
		b.WriteString(" " + e.Source)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Path != "" {
		b.WriteString(": " + e.Path)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// maxPolicyDepth bounds how deeply and/or rules nest in a document.
const maxPolicyDepth = 32

// LoadPolicy reads a policy from a YAML file; see ParsePolicy.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &PolicyError{Source: path, Msg: err.Error()}
	}
	p, err := parsePolicy(data, path)
	if err != nil {
		return nil, err
	}
	p.Source = path
	return p, nil
}

// ParsePolicy reads a policy from YAML:
//
//	default: deny                 # allow, deny or authenticated; deny if left out
//	functions:
//	  add: allow                  # anyone, with or without a token
//	  div: authenticated          # any valid token
//	  stats:                      # a claim compared with a value
//	    match: {field: claims.roles, op: contains, value: admin}
//	  transfer:                   # and/or of rules
//	    and:
//	      - authenticated
//	      - match: {field: args.from, ref: claims.sub}   # an argument compared with a claim
//	  add@v2:
//	    or:
//	      - match: {field: claims.tier, op: in, value: [gold, silver]}
//	      - match: {field: claims.roles, op: contains, value: beta}
//
// Operators: eq (default), ne, in, notin, contains, exists. Every problem
// is a *PolicyError naming its line; unknown keys are errors.
func ParsePolicy(data []byte) (*Policy, error) { return parsePolicy(data, "") }

func parsePolicy(data []byte, source string) (*Policy, error) {
	perr := func(n *yaml.Node, path, format string, args ...any) error {
		line := 0
		if n != nil {
			line = n.Line
		}
		return &PolicyError{Source: source, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, &PolicyError{Source: source, Msg: "not YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, perr(&extra, "", "more than one YAML document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, perr(&doc, "", "empty document")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, perr(root, "", "want a mapping with default and functions")
	}
	p := &Policy{Functions: map[string]Rule{}, Source: source}
	var errs []error
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if seen[k.Value] {
			errs = append(errs, perr(k, k.Value, "appears twice"))
			continue
		}
		seen[k.Value] = true
		switch k.Value {
		case "default":
			r, err := parseRule(v, "default", source, 0)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if r.Kind != KindAllow && r.Kind != KindDeny && r.Kind != KindAuthenticated {
				errs = append(errs, perr(v, "default", "want allow, deny or authenticated"))
				continue
			}
			p.Default = &r
		case "functions":
			if v.Kind != yaml.MappingNode {
				errs = append(errs, perr(v, "functions", "want a mapping of function names to rules"))
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				fk, fv := v.Content[j], v.Content[j+1]
				name := fk.Value
				if fk.Kind != yaml.ScalarNode || name == "" {
					errs = append(errs, perr(fk, "functions", "function names must be non-empty strings"))
					continue
				}
				if _, dup := p.Functions[name]; dup {
					errs = append(errs, perr(fk, "functions."+name, "appears twice"))
					continue
				}
				r, err := parseRule(fv, "functions."+name, source, 0)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				p.Functions[name] = r
			}
		default:
			errs = append(errs, perr(k, k.Value, "unknown key (want default, functions)"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

func parseRule(n *yaml.Node, path, source string, depth int) (Rule, error) {
	perr := func(n *yaml.Node, path, format string, args ...any) error {
		return &PolicyError{Source: source, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	if depth > maxPolicyDepth {
		return Rule{}, perr(n, path, "rules nest deeper than %d", maxPolicyDepth)
	}
	switch n.Kind {
	case yaml.AliasNode:
		return Rule{}, perr(n, path, "YAML aliases are not allowed in policies")
	case yaml.ScalarNode:
		switch RuleKind(n.Value) {
		case KindAllow, KindDeny, KindAuthenticated:
			return Rule{Kind: RuleKind(n.Value)}, nil
		}
		return Rule{}, perr(n, path, "unknown rule %q (want allow, deny, authenticated, or a mapping with match, and, or)", n.Value)
	case yaml.MappingNode:
	default:
		return Rule{}, perr(n, path, "want a rule")
	}
	if len(n.Content) != 2 {
		return Rule{}, perr(n, path, "a rule is one of match, and, or: found %d keys", len(n.Content)/2)
	}
	k, v := n.Content[0], n.Content[1]
	switch k.Value {
	case "match":
		m, err := parseMatch(v, path+".match", source)
		if err != nil {
			return Rule{}, err
		}
		r := Rule{Kind: KindMatch, Match: m}
		if err := r.Match.validate(path + ".match"); err != nil {
			return Rule{}, perr(v, path+".match", "%s", strings.TrimPrefix(err.Error(), path+".match: "))
		}
		return r, nil
	case "and", "or":
		if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
			return Rule{}, perr(v, path+"."+k.Value, "want a non-empty list of rules")
		}
		r := Rule{Kind: RuleKind(k.Value)}
		var errs []error
		for i, sub := range v.Content {
			sr, err := parseRule(sub, fmt.Sprintf("%s.%s[%d]", path, k.Value, i), source, depth+1)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			r.Rules = append(r.Rules, sr)
		}
		return r, errors.Join(errs...)
	case "allow", "deny", "authenticated":
		return Rule{}, perr(k, path, "write %s as a plain word, not a key", k.Value)
	}
	return Rule{}, perr(k, path, "unknown rule %q (want match, and, or)", k.Value)
}

func parseMatch(n *yaml.Node, path, source string) (*Match, error) {
	perr := func(n *yaml.Node, format string, args ...any) error {
		return &PolicyError{Source: source, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return nil, perr(n, "want a mapping with field, op and value or ref")
	}
	m := &Match{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			return nil, perr(k, "%s appears twice", k.Value)
		}
		seen[k.Value] = true
		str := func() (string, error) {
			if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
				return "", perr(v, "%s must be a string", k.Value)
			}
			return v.Value, nil
		}
		var err error
		switch k.Value {
		case "field":
			m.Field, err = str()
		case "op":
			m.Op, err = str()
		case "ref":
			m.Ref, err = str()
		case "value":
			var val any
			if v.Kind == yaml.AliasNode {
				return nil, perr(v, "YAML aliases are not allowed in policies")
			}
			if err := v.Decode(&val); err != nil {
				return nil, perr(v, "value: %v", err)
			}
			if val == nil {
				return nil, perr(v, "value must not be null")
			}
			if m.Value, err = normalize(val); err != nil {
				return nil, perr(v, "value: %v", err)
			}
			if _, isMap := m.Value.(map[string]any); isMap {
				return nil, perr(v, "value must be a string, number, bool or list")
			}
		default:
			return nil, perr(k, "unknown key %q (want field, op, value, ref)", k.Value)
		}
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// YAML writes p in the format ParsePolicy reads.
func (p *Policy) YAML() ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode}
	if p.Default != nil {
		root.Content = append(root.Content, scalar("default"), ruleNode(*p.Default))
	}
	fns := &yaml.Node{Kind: yaml.MappingNode}
	for _, name := range p.Names() {
		fns.Content = append(fns.Content, scalar(name), ruleNode(p.Functions[name]))
	}
	root.Content = append(root.Content, scalar("functions"), fns)
	return yaml.Marshal(root)
}

func scalar(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

func ruleNode(r Rule) *yaml.Node {
	switch r.Kind {
	case KindMatch:
		m := &yaml.Node{Kind: yaml.MappingNode}
		if r.Match != nil {
			m.Content = append(m.Content, scalar("field"), scalar(r.Match.Field))
			if r.Match.Op != "" {
				m.Content = append(m.Content, scalar("op"), scalar(r.Match.Op))
			}
			if r.Match.Ref != "" {
				m.Content = append(m.Content, scalar("ref"), scalar(r.Match.Ref))
			}
			if r.Match.Value != nil {
				var v yaml.Node
				v.Encode(r.Match.Value)
				m.Content = append(m.Content, scalar("value"), &v)
			}
		}
		return &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{scalar("match"), m}}
	case KindAnd, KindOr:
		list := &yaml.Node{Kind: yaml.SequenceNode}
		for _, sub := range r.Rules {
			list.Content = append(list.Content, ruleNode(sub))
		}
		return &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{scalar(string(r.Kind)), list}}
	}
	return scalar(string(r.Kind))
}
