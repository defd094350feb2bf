package security_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/security"
)

func argsOf(js string) func() (any, error) {
	return func() (any, error) {
		var v any
		err := json.Unmarshal([]byte(js), &v)
		return v, err
	}
}

func TestEveryRuleType(t *testing.T) {
	alice := security.Claims{"sub": "alice", "roles": []any{"user", "admin"}, "tier": "gold", "org": map[string]any{"id": "o1"}, "scope": "read write", "level": float64(3)}
	bob := security.Claims{"sub": "bob", "roles": []any{"user"}, "tier": "free", "level": float64(1)}
	type call struct {
		claims security.Claims
		args   string
		want   fnmesh.Code // "" = allowed
	}
	cases := []struct {
		name  string
		rule  security.Rule
		calls []call
	}{
		{"allow", security.Allow(), []call{{nil, `{}`, ""}, {alice, `{}`, ""}}},
		{"deny", security.Deny(), []call{{nil, `{}`, fnmesh.CodePermissionDenied}, {alice, `{}`, fnmesh.CodePermissionDenied}}},
		{"authenticated", security.Authenticated(), []call{{nil, `{}`, fnmesh.CodeUnauthenticated}, {bob, `{}`, ""}}},
		{"claim eq value", security.MatchValue("claims.tier", "eq", "gold"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}, {nil, `{}`, fnmesh.CodeUnauthenticated}}},
		{"default op is eq", security.MatchValue("claims.sub", "", "alice"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"claim ne value", security.MatchValue("claims.tier", "ne", "free"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"ne on a missing claim denies", security.MatchValue("claims.missing", "ne", "x"), []call{{alice, `{}`, fnmesh.CodePermissionDenied}}},
		{"claim in list", security.MatchValue("claims.tier", "in", []string{"gold", "silver"}), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"claim notin list", security.MatchValue("claims.tier", "notin", []any{"free"}), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"roles contains", security.MatchValue("claims.roles", "contains", "admin"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"scope string contains", security.MatchValue("claims.scope", "contains", "write"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"nested claim", security.MatchValue("claims.org.id", "eq", "o1"), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"number claim", security.MatchValue("claims.level", "in", []any{3, 4}), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"claim exists", security.Rule{Kind: security.KindMatch, Match: &security.Match{Field: "claims.org", Op: "exists"}}, []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}}},
		{"arg eq value", security.MatchValue("args.region", "eq", "eu"), []call{{nil, `{"region":"eu"}`, ""}, {nil, `{"region":"us"}`, fnmesh.CodePermissionDenied}, {nil, `{}`, fnmesh.CodePermissionDenied}}},
		{"arg number", security.MatchValue("args.amount", "eq", 10), []call{{nil, `{"amount":10}`, ""}, {nil, `{"amount":10.5}`, fnmesh.CodePermissionDenied}}},
		{"arg in a list element", security.MatchValue("args.items.1", "eq", "b"), []call{{nil, `{"items":["a","b"]}`, ""}, {nil, `{"items":["a"]}`, fnmesh.CodePermissionDenied}}},
		{"arg null is absent", security.Rule{Kind: security.KindMatch, Match: &security.Match{Field: "args.x", Op: "exists"}}, []call{{nil, `{"x":null}`, fnmesh.CodePermissionDenied}, {nil, `{"x":0}`, ""}}},
		{"arg eq claim", security.MatchClaim("args.owner", "eq", "claims.sub"), []call{{alice, `{"owner":"alice"}`, ""}, {bob, `{"owner":"alice"}`, fnmesh.CodePermissionDenied}, {nil, `{"owner":"alice"}`, fnmesh.CodeUnauthenticated}}},
		{"claim eq missing arg", security.MatchClaim("claims.sub", "eq", "args.owner"), []call{{alice, `{}`, fnmesh.CodePermissionDenied}}},
		{"and", security.And(security.Authenticated(), security.MatchValue("claims.roles", "contains", "admin")), []call{{alice, `{}`, ""}, {bob, `{}`, fnmesh.CodePermissionDenied}, {nil, `{}`, fnmesh.CodeUnauthenticated}}},
		{"or", security.Or(security.MatchValue("claims.roles", "contains", "admin"), security.MatchClaim("args.owner", "eq", "claims.sub")), []call{{alice, `{"owner":"x"}`, ""}, {bob, `{"owner":"bob"}`, ""}, {bob, `{"owner":"x"}`, fnmesh.CodePermissionDenied}}},
		{"or of deny and allow", security.Or(security.Deny(), security.Allow()), []call{{nil, `{}`, ""}}},
		{"and with deny", security.And(security.Allow(), security.Deny()), []call{{alice, `{}`, fnmesh.CodePermissionDenied}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.rule.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			for i, c := range tc.calls {
				err := security.Decide(tc.rule, security.Input{Service: "s", Function: "f", Claims: c.claims, Args: argsOf(c.args)})
				if got := fnmesh.CodeOf(err); got != c.want {
					t.Errorf("call %d (claims %v, args %s): got %q (%v), want %q", i, c.claims["sub"], c.args, got, err, c.want)
				}
			}
		})
	}
}

func TestArgsAreDecodedOnlyWhenARuleReadsThem(t *testing.T) {
	decoded := 0
	args := func() (any, error) { decoded++; return map[string]any{}, nil }
	security.Decide(security.Authenticated(), security.Input{Claims: security.Claims{"sub": "a"}, Args: args})
	if decoded != 0 {
		t.Fatal("arguments decoded for a rule that does not read them")
	}
	r := security.Or(security.MatchValue("args.a", "eq", 1), security.MatchValue("args.b", "eq", 1))
	security.Decide(r, security.Input{Args: args})
	if decoded != 1 {
		t.Fatalf("arguments decoded %d times, want once", decoded)
	}
	if !r.ReadsArgs() || security.Allow().ReadsArgs() {
		t.Fatal("ReadsArgs")
	}
	// Arguments that are not JSON are the caller's fault.
	err := security.Decide(r, security.Input{Args: func() (any, error) { return nil, errors.New("bad json") }})
	if fnmesh.CodeOf(err) != fnmesh.CodeInvalidArgument {
		t.Fatalf("got %v", err)
	}
}

func TestPolicyDefaults(t *testing.T) {
	p := &security.Policy{Functions: map[string]security.Rule{"open": security.Allow()}}
	if err := p.Decide("other", security.Input{Claims: security.Claims{"sub": "a"}}); fnmesh.CodeOf(err) != fnmesh.CodePermissionDenied {
		t.Fatalf("no rule and no default: %v, want permission_denied", err)
	}
	if err := p.Decide("open", security.Input{}); err != nil {
		t.Fatal(err)
	}
	auth := security.Authenticated()
	p.Default = &auth
	if err := p.Decide("other", security.Input{}); fnmesh.CodeOf(err) != fnmesh.CodeUnauthenticated {
		t.Fatalf("default authenticated without token: %v", err)
	}
	if err := p.Decide("other", security.Input{Claims: security.Claims{}}); err != nil {
		t.Fatal(err)
	}
	if _, isDefault := p.RuleFor("open"); isDefault {
		t.Fatal("RuleFor(open) says default")
	}
}

func TestRuleValidate(t *testing.T) {
	bad := map[string]security.Rule{
		"empty kind":        {},
		"unknown kind":      {Kind: "maybe"},
		"match without":     {Kind: security.KindMatch},
		"bad root":          security.MatchValue("token.sub", "eq", "a"),
		"empty segment":     security.MatchValue("claims..sub", "eq", "a"),
		"unknown op":        security.MatchValue("claims.sub", "like", "a"),
		"no value":          security.MatchValue("claims.sub", "eq", nil),
		"value and ref":     {Kind: security.KindMatch, Match: &security.Match{Field: "claims.a", Value: "x", Ref: "claims.b"}},
		"in without list":   security.MatchValue("claims.sub", "in", "a"),
		"eq with list":      security.MatchValue("claims.sub", "eq", []any{"a"}),
		"exists with value": {Kind: security.KindMatch, Match: &security.Match{Field: "claims.a", Op: "exists", Value: "x"}},
		"empty and":         security.And(),
		"bad inside or":     security.Or(security.Allow(), security.Rule{Kind: "nope"}),
		"allow with rules":  {Kind: security.KindAllow, Rules: []security.Rule{security.Deny()}},
		"uncomparable":      security.MatchValue("claims.a", "eq", struct{}{}),
	}
	for name, r := range bad {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted %s", name, r)
		}
	}
}

const examplePolicy = `
# who may call the functions of math
default: deny
functions:
  add: allow
  div: authenticated
  stats:
    match: {field: claims.roles, op: contains, value: admin}
  transfer:
    and:
      - authenticated
      - match: {field: args.from, ref: claims.sub}
  "add@v2":
    or:
      - match: {field: claims.tier, op: in, value: [gold, silver]}
      - deny
`

func TestParsePolicy(t *testing.T) {
	p, err := security.ParsePolicy([]byte(examplePolicy))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"add":      "allow",
		"div":      "authenticated",
		"stats":    `match(claims.roles contains "admin")`,
		"transfer": "and(authenticated, match(args.from eq claims.sub))",
		"add@v2":   `or(match(claims.tier in ["gold" "silver"]), deny)`,
	}
	for fn, w := range want {
		if got := p.Functions[fn].String(); got != w {
			t.Errorf("%s: %s, want %s", fn, got, w)
		}
	}
	if p.Default == nil || p.Default.Kind != security.KindDeny {
		t.Fatalf("default %v", p.Default)
	}
	gold := security.Claims{"sub": "a", "tier": "gold"}
	if err := p.Decide("add@v2", security.Input{Claims: gold}); err != nil {
		t.Fatal(err)
	}
	if err := p.Decide("transfer", security.Input{Claims: gold, Args: argsOf(`{"from":"a"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := p.Decide("transfer", security.Input{Claims: gold, Args: argsOf(`{"from":"b"}`)}); fnmesh.CodeOf(err) != fnmesh.CodePermissionDenied {
		t.Fatalf("transfer from another account: %v", err)
	}
	// Round trip through YAML.
	out, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	q, err := security.ParsePolicy(out)
	if err != nil {
		t.Fatalf("re-parse of\n%s: %v", out, err)
	}
	for fn := range want {
		if q.Functions[fn].String() != p.Functions[fn].String() {
			t.Errorf("round trip changed %s: %s -> %s", fn, p.Functions[fn], q.Functions[fn])
		}
	}
}

func TestLoadPolicyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(path, []byte(examplePolicy), 0o600)
	p, err := security.LoadPolicy(path)
	if err != nil || p.Source != path || len(p.Functions) != 5 {
		t.Fatalf("LoadPolicy: %v %+v", err, p)
	}
	_, err = security.LoadPolicy(filepath.Join(t.TempDir(), "missing.yaml"))
	var pe *security.PolicyError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestMalformedPoliciesAreTypedErrorsWithLines(t *testing.T) {
	cases := map[string]struct {
		doc, want string
		line      int
	}{
		"not yaml":        {"functions: [", "not YAML", 0},
		"not a mapping":   {"- allow", "want a mapping", 1},
		"unknown top key": {"default: deny\nfunctionz: {}", "unknown key", 2},
		"bad default":     {"default:\n  match: {field: claims.a, value: 1}", "want allow, deny or authenticated", 2},
		"unknown rule":    {"functions:\n  add: maybe", `unknown rule "maybe"`, 2},
		"two keys":        {"functions:\n  add:\n    and: [allow]\n    or: [deny]", "one of match, and, or", 3},
		"empty and":       {"functions:\n  add:\n    and: []", "non-empty list", 3},
		"bad op":          {"functions:\n  add:\n    match: {field: claims.a, op: like, value: 1}", "unknown operator", 3},
		"bad field":       {"functions:\n  add:\n    match: {field: sub, value: 1}", "claims.NAME or args.NAME", 3},
		"unknown key":     {"functions:\n  add:\n    match: {field: claims.a, valeu: 1}", `unknown key "valeu"`, 3},
		"map value":       {"functions:\n  add:\n    match: {field: claims.a, value: {x: 1}}", "string, number, bool or list", 3},
		"null value":      {"functions:\n  add:\n    match: {field: claims.a, value: null}", "must not be null", 3},
		"field not str":   {"functions:\n  add:\n    match: {field: 3, value: 1}", "must be a string", 3},
		"duplicate fn":    {"functions:\n  add: allow\n  add: deny", "appears twice", 3},
		"nested error":    {"functions:\n  add:\n    or:\n      - allow\n      - nope", "functions.add.or[1]", 5},
		"allow as key":    {"functions:\n  add:\n    allow: true", "plain word", 3},
		"alias":           {"functions:\n  a: &x allow\n  add: *x", "alias", 3},
		"two documents":   {"functions: {}\n---\nfunctions: {}", "more than one", 2},
		"empty":           {"", "", 0},
		"deep nesting":    {"functions:\n  add: " + strings.Repeat("{or: [", 40) + "allow" + strings.Repeat("]}", 40), "nest deeper", 2},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := security.ParsePolicy([]byte(tc.doc))
			var pe *security.PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v (%T), want a *PolicyError", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if tc.line > 0 && pe.Line != tc.line {
				t.Errorf("line %d, want %d (%v)", pe.Line, tc.line, err)
			}
		})
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(examplePolicy))
	f.Add([]byte("default: allow\nfunctions: {a: deny}"))
	f.Add([]byte("functions:\n  f:\n    match: {field: args.a.0.b, op: notin, value: [1, x, true]}"))
	f.Add([]byte("functions: {f: {and: [{or: [authenticated]}]}}"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := security.ParsePolicy(data)
		if err != nil {
			var pe *security.PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error is not a *PolicyError: %T %v", err, err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed policy does not validate: %v", err)
		}
		// Whatever was accepted can be decided on without a panic and
		// written back to the same rules.
		for _, name := range p.Names() {
			p.Decide(name, security.Input{Claims: security.Claims{"sub": "x"}, Args: argsOf(`{"a":[{"b":1}]}`)})
		}
		out, err := p.YAML()
		if err != nil {
			t.Fatal(err)
		}
		q, err := security.ParsePolicy(out)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		for _, name := range p.Names() {
			if q.Functions[name].String() != p.Functions[name].String() {
				t.Fatalf("round trip changed %s: %s -> %s", name, p.Functions[name], q.Functions[name])
			}
		}
	})
}
