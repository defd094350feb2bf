package meshtest

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/security"
)

// testPolicyReadsArgsAsTheFunction: an access rule reads the arguments
// as the function does, or the call is refused as invalid_argument:
// two spellings of one field and integers a float64 cannot hold never
// pass a rule with a value the function does not get.
func testPolicyReadsArgsAsTheFunction(t *testing.T, h *Harness) {
	policy, err := security.ParsePolicy([]byte(`
functions:
  transfer:
    match: {field: args.account, ref: claims.sub}
  pay:
    match: {field: args.amount, op: in, value: [1, 2, 3]}
  fetch:
    match: {field: args.id, value: 9007199254740992}
`))
	if err != nil {
		t.Fatal(err)
	}
	v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	name := Name("rules")
	svc := handlers.NewService(name, handlers.Config{Auth: v, Policy: policy, Logger: Quiet})
	type In struct {
		Account string `json:"account"`
		Amount  int64  `json:"amount"`
		ID      int64  `json:"id"`
		Meta    struct {
			Note string `json:"note"`
		} `json:"meta"`
	}
	var mu sync.Mutex
	var got []In
	record := func(_ context.Context, in In) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, in)
		return "ok", nil
	}
	handlers.Register(svc, "transfer", record)
	handlers.Register(svc, "pay", record)
	handlers.Register(svc, "fetch", record)
	h.Start(svc)
	alice, _ := security.NewHS256Signer(testSecret).Sign("alice", time.Minute, nil)
	c := h.Client(client.Config{Breaker: client.BreakerConfig{Disabled: true}})

	for _, tc := range []struct {
		label, fn, args string
		want            fnmesh.Code // "" = runs
	}{
		{"two spellings of the ruled field", "transfer", `{"account":"alice","Account":"bob"}`, fnmesh.CodeInvalidArgument},
		{"the ruled field twice", "transfer", `{"account":"alice","account":"bob"}`, fnmesh.CodeInvalidArgument},
		{"case-folded amount", "pay", `{"amount":1,"Amount":1000}`, fnmesh.CodeInvalidArgument},
		{"two spellings of another field", "transfer", `{"account":"alice","meta":{"note":"a","NOTE":"b"}}`, fnmesh.CodeInvalidArgument},
		{"2^53+1", "fetch", `{"id":9007199254740993}`, fnmesh.CodeInvalidArgument},
		{"2^64", "fetch", `{"id":18446744073709551616}`, fnmesh.CodeInvalidArgument},
		{"other spelling only: the rule matches as the function does", "transfer", `{"Account":"alice"}`, ""},
		{"2^53 exactly", "fetch", `{"id":9007199254740992}`, ""},
		{"amount in the list", "pay", `{"amount":2}`, ""},
	} {
		err := c.Call(context.Background(), fn(name, tc.fn), json.RawMessage(tc.args), nil, client.WithToken(alice))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want it to run", tc.label, err)
			}
			continue
		}
		WantCode(t, err, tc.want)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []In{{Account: "alice"}, {ID: 1 << 53}, {Amount: 2}}
	if len(got) != len(want) {
		t.Fatalf("function ran with %+v, want only %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("run %d got %+v, want %+v", i, got[i], want[i])
		}
	}
}
