package security

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/fnmesh/fnmesh"
)

// RuleKind names what a Rule does.
type RuleKind string

// The rule kinds.
const (
	KindAllow         RuleKind = "allow"         // anyone, with or without a token
	KindDeny          RuleKind = "deny"          // nobody
	KindAuthenticated RuleKind = "authenticated" // any caller with a valid token
	KindMatch         RuleKind = "match"         // a claim or argument compared with a value or a claim
	KindAnd           RuleKind = "and"           // every sub-rule
	KindOr            RuleKind = "or"            // at least one sub-rule
)

// Match operators.
const (
	OpEq       = "eq"       // field equals the value (default)
	OpNe       = "ne"       // field is present and differs from the value
	OpIn       = "in"       // field equals one of the values (a list)
	OpNotIn    = "notin"    // field is present and equals none of the values
	OpContains = "contains" // field is a list (or a space-separated string) holding the value
	OpExists   = "exists"   // field is present (no value)
)

var matchOps = []string{OpEq, OpNe, OpIn, OpNotIn, OpContains, OpExists}

// Rule decides whether a caller may call a function. Build rules with
// Allow, Deny, Authenticated, MatchValue, MatchClaim, And and Or, or load
// them from YAML with ParsePolicy.
type Rule struct {
	Kind  RuleKind
	Match *Match // KindMatch
	Rules []Rule // KindAnd, KindOr
}

// Match compares Field, a path such as "claims.sub" or "args.account.id",
// with Value or with the field at Ref (another path). A field that is
// absent never matches, whatever the operator: a rule cannot be
// satisfied by leaving something out.
type Match struct {
	Field string
	Op    string // one of the Op constants; "" means eq
	Value any    // a string, number, bool or (for in/notin) a list
	Ref   string // instead of Value: the path of the value to compare with
}

// Allow admits every caller, with or without a token. A token that is
// sent must still be valid.
func Allow() Rule { return Rule{Kind: KindAllow} }

// Deny refuses every caller.
func Deny() Rule { return Rule{Kind: KindDeny} }

// Authenticated admits callers with a valid token.
func Authenticated() Rule { return Rule{Kind: KindAuthenticated} }

// MatchValue admits callers for whom field (e.g. "claims.roles",
// "args.region") compares with value under op.
func MatchValue(field, op string, value any) Rule {
	return Rule{Kind: KindMatch, Match: &Match{Field: field, Op: op, Value: value}}
}

// MatchClaim admits callers for whom field compares with the value at
// ref under op, e.g. MatchClaim("args.user_id", "eq", "claims.sub").
func MatchClaim(field, op, ref string) Rule {
	return Rule{Kind: KindMatch, Match: &Match{Field: field, Op: op, Ref: ref}}
}

// And admits callers every rule admits.
func And(rules ...Rule) Rule { return Rule{Kind: KindAnd, Rules: rules} }

// Or admits callers at least one rule admits.
func Or(rules ...Rule) Rule { return Rule{Kind: KindOr, Rules: rules} }

// String writes r compactly, e.g. and(authenticated, match(claims.sub eq args.owner)).
func (r Rule) String() string {
	switch r.Kind {
	case KindMatch:
		if r.Match == nil {
			return "match(?)"
		}
		op := r.Match.Op
		if op == "" {
			op = OpEq
		}
		switch {
		case op == OpExists:
			return fmt.Sprintf("match(%s exists)", r.Match.Field)
		case r.Match.Ref != "":
			return fmt.Sprintf("match(%s %s %s)", r.Match.Field, op, r.Match.Ref)
		}
		return fmt.Sprintf("match(%s %s %s)", r.Match.Field, op, formatValue(r.Match.Value))
	case KindAnd, KindOr:
		parts := make([]string, len(r.Rules))
		for i, sub := range r.Rules {
			parts[i] = sub.String()
		}
		return string(r.Kind) + "(" + strings.Join(parts, ", ") + ")"
	}
	return string(r.Kind)
}

func formatValue(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = formatValue(e)
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprint(v)
}

// Validate reports every problem with r: an unknown kind or operator, a
// path that does not start with "claims." or "args.", a match with both
// or neither of Value and Ref, an and/or without sub-rules.
func (r Rule) Validate() error { return r.validate("rule") }

func (r Rule) validate(at string) error {
	switch r.Kind {
	case KindAllow, KindDeny, KindAuthenticated:
		if r.Match != nil || len(r.Rules) > 0 {
			return fmt.Errorf("%s: %s takes no match or sub-rules", at, r.Kind)
		}
		return nil
	case KindMatch:
		if r.Match == nil {
			return fmt.Errorf("%s: match without a field", at)
		}
		return r.Match.validate(at)
	case KindAnd, KindOr:
		if len(r.Rules) == 0 {
			return fmt.Errorf("%s: %s needs at least one rule", at, r.Kind)
		}
		var errs []error
		for i, sub := range r.Rules {
			if err := sub.validate(fmt.Sprintf("%s.%s[%d]", at, r.Kind, i)); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	case "":
		return fmt.Errorf("%s: rule kind is empty", at)
	}
	return fmt.Errorf("%s: unknown rule kind %q (want allow, deny, authenticated, match, and, or)", at, r.Kind)
}

func (m *Match) validate(at string) error {
	var errs []error
	if err := validPath(m.Field); err != nil {
		errs = append(errs, fmt.Errorf("%s: field: %w", at, err))
	}
	op := m.Op
	if op == "" {
		op = OpEq
	}
	if !contains(matchOps, op) {
		errs = append(errs, fmt.Errorf("%s: unknown operator %q (want %s)", at, m.Op, strings.Join(matchOps, ", ")))
	}
	switch {
	case op == OpExists:
		if m.Value != nil || m.Ref != "" {
			errs = append(errs, fmt.Errorf("%s: exists takes no value", at))
		}
	case m.Ref != "" && m.Value != nil:
		errs = append(errs, fmt.Errorf("%s: give value or ref, not both", at))
	case m.Ref != "":
		if err := validPath(m.Ref); err != nil {
			errs = append(errs, fmt.Errorf("%s: ref: %w", at, err))
		}
	case m.Value == nil:
		errs = append(errs, fmt.Errorf("%s: %s needs a value or a ref", at, op))
	default:
		v, err := normalize(m.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: value: %w", at, err))
			break
		}
		_, isList := v.([]any)
		if (op == OpIn || op == OpNotIn) && !isList {
			errs = append(errs, fmt.Errorf("%s: %s needs a list of values", at, op))
		}
		if op != OpIn && op != OpNotIn && isList {
			errs = append(errs, fmt.Errorf("%s: %s compares with one value, not a list", at, op))
		}
	}
	return errors.Join(errs...)
}

func validPath(p string) error {
	root, rest, ok := strings.Cut(p, ".")
	if !ok || (root != "claims" && root != "args") || rest == "" {
		return fmt.Errorf("%q: want claims.NAME or args.NAME", p)
	}
	for _, seg := range strings.Split(rest, ".") {
		if seg == "" {
			return fmt.Errorf("%q: empty segment", p)
		}
	}
	return nil
}

// Policy decides per function who may call it. A function without a rule
// gets Default; a nil Default denies.
type Policy struct {
	// Default applies to functions Functions does not name. Nil: deny.
	Default *Rule
	// Functions maps a function name ("add", "add@v2") to its rule.
	Functions map[string]Rule
	// Source names where the policy came from, for messages.
	Source string
}

// Validate reports every problem with p's rules.
func (p *Policy) Validate() error {
	var errs []error
	if p.Default != nil {
		if err := p.Default.validate("default"); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range p.Names() {
		if name == "" {
			errs = append(errs, errors.New("functions: empty function name"))
			continue
		}
		if err := p.Functions[name].validate("functions." + name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if p.Source != "" {
			return fmt.Errorf("policy %s: %w", p.Source, err)
		}
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// Names returns the functions that have a rule, sorted.
func (p *Policy) Names() []string {
	names := make([]string, 0, len(p.Functions))
	for n := range p.Functions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// RuleFor returns the rule for function and whether it is the default.
func (p *Policy) RuleFor(function string) (r Rule, isDefault bool) {
	if r, ok := p.Functions[function]; ok {
		return r, false
	}
	if p.Default != nil {
		return *p.Default, true
	}
	return Deny(), true
}

// Input is what a rule sees of one call.
type Input struct {
	Service, Function string
	// Claims of the caller's verified token; nil when the caller sent none.
	Claims Claims
	// Args returns the call's arguments decoded from JSON, as DecodeArgs
	// does (objects as map[string]any, numbers as json.Number). Called
	// only by rules that read "args.".
	Args func() (any, error)
}

// Decide applies function's rule to in: nil when the call may go on,
// else a *fnmesh.Error: unauthenticated when the caller sent no token and
// the rule reads the token (so one might help), permission_denied
// otherwise.
func (p *Policy) Decide(function string, in Input) error {
	r, _ := p.RuleFor(function)
	return Decide(r, in)
}

// Decide applies rule r to in; see Policy.Decide.
func Decide(r Rule, in Input) error {
	ev := evaluator{in: in}
	ok, err := ev.eval(r)
	if err != nil {
		return fnmesh.Errorf(fnmesh.CodeInvalidArgument, "access rule of %s.%s cannot read the arguments: %v", in.Service, in.Function, err)
	}
	if ok {
		return nil
	}
	if in.Claims == nil && r.readsToken() {
		return fnmesh.Errorf(fnmesh.CodeUnauthenticated, "%s.%s requires a token", in.Service, in.Function)
	}
	return fnmesh.Errorf(fnmesh.CodePermissionDenied, "access to %s.%s denied by rule %s", in.Service, in.Function, r)
}

// readsToken reports whether a token could change r's outcome.
func (r Rule) readsToken() bool {
	switch r.Kind {
	case KindAuthenticated:
		return true
	case KindMatch:
		return r.Match != nil && (strings.HasPrefix(r.Match.Field, "claims.") || strings.HasPrefix(r.Match.Ref, "claims."))
	case KindAnd, KindOr:
		for _, sub := range r.Rules {
			if sub.readsToken() {
				return true
			}
		}
	}
	return false
}

// ReadsArgs reports whether r compares the call's arguments.
func (r Rule) ReadsArgs() bool {
	switch r.Kind {
	case KindMatch:
		return r.Match != nil && (strings.HasPrefix(r.Match.Field, "args.") || strings.HasPrefix(r.Match.Ref, "args."))
	case KindAnd, KindOr:
		for _, sub := range r.Rules {
			if sub.ReadsArgs() {
				return true
			}
		}
	}
	return false
}

type evaluator struct {
	in      Input
	args    any
	argErr  error
	decoded bool
}

func (e *evaluator) eval(r Rule) (bool, error) {
	switch r.Kind {
	case KindAllow:
		return true, nil
	case KindAuthenticated:
		return e.in.Claims != nil, nil
	case KindMatch:
		if r.Match == nil {
			return false, nil
		}
		return e.match(r.Match)
	case KindAnd:
		for _, sub := range r.Rules {
			if ok, err := e.eval(sub); !ok || err != nil {
				return false, err
			}
		}
		return len(r.Rules) > 0, nil
	case KindOr:
		for _, sub := range r.Rules {
			ok, err := e.eval(sub)
			if err != nil {
				return false, err
			}
			if ok {
				return true, nil
			}
		}
	}
	return false, nil // deny, and anything unknown
}

func (e *evaluator) lookup(path string) (any, bool, error) {
	root, rest, _ := strings.Cut(path, ".")
	var v any
	switch root {
	case "claims":
		if e.in.Claims == nil {
			return nil, false, nil
		}
		v = map[string]any(e.in.Claims)
	case "args":
		if !e.decoded {
			e.decoded = true
			if e.in.Args != nil {
				e.args, e.argErr = e.in.Args()
			}
		}
		if e.argErr != nil {
			return nil, false, e.argErr
		}
		v = e.args
	default:
		return nil, false, nil
	}
	for _, seg := range strings.Split(rest, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if root == "args" {
				v, ok = lookupKey(x, seg)
			} else {
				v, ok = x[seg]
			}
			if !ok {
				return nil, false, nil
			}
		case Claims:
			var ok bool
			if v, ok = x[seg]; !ok {
				return nil, false, nil
			}
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false, nil
			}
			v = x[i]
		default:
			return nil, false, nil
		}
	}
	if v == nil {
		return nil, false, nil // JSON null counts as absent
	}
	nv, err := normalize(v)
	if errors.Is(err, errInexact) {
		return nil, false, err
	}
	if err != nil {
		return nil, false, nil
	}
	return nv, true, nil
}

func (e *evaluator) match(m *Match) (bool, error) {
	field, ok, err := e.lookup(m.Field)
	if err != nil || !ok {
		return false, err
	}
	op := m.Op
	if op == "" {
		op = OpEq
	}
	if op == OpExists {
		return true, nil
	}
	var want any
	if m.Ref != "" {
		if want, ok, err = e.lookup(m.Ref); err != nil || !ok {
			return false, err
		}
	} else if want, err = normalize(m.Value); err != nil {
		return false, nil
	}
	switch op {
	case OpEq:
		return equal(field, want), nil
	case OpNe:
		return !equal(field, want), nil
	case OpIn, OpNotIn:
		list, isList := want.([]any)
		if !isList {
			return false, nil
		}
		found := false
		for _, w := range list {
			if equal(field, w) {
				found = true
				break
			}
		}
		return found == (op == OpIn), nil
	case OpContains:
		switch x := field.(type) {
		case []any:
			for _, f := range x {
				if equal(f, want) {
					return true, nil
				}
			}
		case string:
			for _, f := range splitSpaces(x) {
				if equal(f, want) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// normalize turns numbers into float64 and lists into []any, so that
// values from YAML, JSON and Go compare alike.
func normalize(v any) (any, error) {
	switch x := v.(type) {
	case nil, string, bool, float64:
		return x, nil
	case json.Number:
		return numberValue(x)
	case int:
		return float64(x), nil
	case int64:
		return float64(x), nil
	case int32:
		return float64(x), nil
	case uint64:
		return float64(x), nil
	case uint:
		return float64(x), nil
	case float32:
		return float64(x), nil
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			n, err := normalize(e)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]any:
		return x, nil
	}
	return nil, fmt.Errorf("value of type %T cannot be compared", v)
}

func equal(a, b any) bool {
	if fa, ok := a.(float64); ok {
		fb, ok := b.(float64)
		return ok && fa == fb
	}
	return reflect.DeepEqual(a, b)
}
