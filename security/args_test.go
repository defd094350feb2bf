package security_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/security"
)

func decodedArgs(js string) func() (any, error) {
	return func() (any, error) { return security.DecodeArgs([]byte(js)) }
}

// A rule reads the arguments as encoding/json gives them to the function,
// or refuses them as invalid_argument.
func TestRuleReadsArgsAsTheFunction(t *testing.T) {
	alice := security.Claims{"sub": "alice"}
	own := security.MatchClaim("args.account", "eq", "claims.sub")
	small := security.MatchValue("args.amount", "in", []any{1, 2, 3})
	id := security.MatchValue("args.id", "eq", 9007199254740992)
	nested := security.MatchClaim("args.order.account", "eq", "claims.sub")
	cases := []struct {
		name string
		rule security.Rule
		args string
		want fnmesh.Code // "" = allowed
		says string      // part of the message
	}{
		{"two spellings", own, `{"account":"alice","Account":"bob"}`, fnmesh.CodeInvalidArgument, `keys "account" and "Account" differ only in case`},
		{"same key twice", own, `{"account":"alice","account":"bob"}`, fnmesh.CodeInvalidArgument, `key "account" appears twice`},
		{"case-folded amount", small, `{"amount":1,"Amount":1000}`, fnmesh.CodeInvalidArgument, "differ only in case"},
		{"unicode fold (K and Kelvin sign)", security.MatchValue("args.k", "eq", "a"), `{"k":"a","\u212a":"b"}`, fnmesh.CodeInvalidArgument, "differ only in case"},
		{"duplicate deep inside", own, `{"account":"alice","list":[{"x":1,"x":2}]}`, fnmesh.CodeInvalidArgument, "appears twice"},
		{"nested two spellings", nested, `{"order":{"account":"alice","ACCOUNT":"bob"}}`, fnmesh.CodeInvalidArgument, "differ only in case"},
		{"2^53+1", id, `{"id":9007199254740993}`, fnmesh.CodeInvalidArgument, "beyond ±2^53"},
		{"-2^53-1", security.MatchValue("args.id", "ne", 0), `{"id":-9007199254740993}`, fnmesh.CodeInvalidArgument, "beyond ±2^53"},
		{"beyond int64", id, `{"id":100000000000000000000}`, fnmesh.CodeInvalidArgument, "beyond ±2^53"},
		{"float out of range", security.MatchValue("args.x", "ne", 0), `{"x":1e400}`, fnmesh.CodeInvalidArgument, "out of range"},
		{"big integer in a list", security.MatchValue("args.ids", "contains", 1), `{"ids":[1,9007199254740993]}`, fnmesh.CodeInvalidArgument, "beyond ±2^53"},
		{"2^53 exactly", id, `{"id":9007199254740992}`, "", ""},
		{"other spelling matches as encoding/json does", own, `{"ACCOUNT":"alice"}`, "", ""},
		{"other spelling, other value", own, `{"Account":"bob"}`, fnmesh.CodePermissionDenied, ""},
		{"exact key", own, `{"account":"alice"}`, "", ""},
		{"fraction", security.MatchValue("args.x", "eq", 0.5), `{"x":0.5}`, "", ""},
		{"amount in list", small, `{"amount":2}`, "", ""},
		{"empty arguments", security.MatchValue("args.x", "exists", nil), ``, fnmesh.CodePermissionDenied, ""},
	}
	for _, tc := range cases {
		err := security.Decide(tc.rule, security.Input{Service: "bank", Function: "f", Claims: alice, Args: decodedArgs(tc.args)})
		if got := fnmesh.CodeOf(err); got != tc.want {
			t.Errorf("%s: %v, want code %q", tc.name, err, tc.want)
			continue
		}
		if tc.says != "" && !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %q does not say %q", tc.name, err, tc.says)
		}
	}
}

// What DecodeArgs accepts, encoding/json decodes to the same values.
func TestDecodeArgsAgreesWithEncodingJSON(t *testing.T) {
	for _, js := range []string{`{"a":1,"b":[true,null,"x",{"c":2.5}],"d":{}}`, `[1,2]`, `"s"`, `null`, ` {"n":-0} `} {
		got, err := security.DecodeArgs([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		a, _ := json.Marshal(got)
		var want any
		if err := json.Unmarshal([]byte(js), &want); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(want)
		if string(a) != string(b) {
			t.Errorf("%s: decoded as %s, encoding/json gives %s", js, a, b)
		}
	}
	for _, js := range []string{`{"a":1} x`, `{"a":`, strings.Repeat("[", 10002) + strings.Repeat("]", 10002)} {
		if _, err := security.DecodeArgs([]byte(js)); err == nil {
			t.Errorf("%.40s: no error", js)
		}
	}
}
