package handlers

import "testing"

// The stored names of idempotency keys and the arguments' hash are part
// of the protocol: a TypeScript worker computes the same (the same
// vectors are in client/js/test/security.test.ts).
func TestIdempotencyScopeVectors(t *testing.T) {
	if got, want := idemScope("pay@v2", "alice", "k-1"), "e0ea0eb467b0fbaa4dddf8a6c8e493d207084bf9b84c9a3fdbdf31e6a934e1f7"; got != want {
		t.Errorf("idemScope = %s, want %s", got, want)
	}
	if got, want := argsHash([]byte(`{"a":1}`)), "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"; got != want {
		t.Errorf("argsHash = %s, want %s", got, want)
	}
	// The subject's length keeps subject and key apart.
	if idemScope("f", "a", "bc") == idemScope("f", "ab", "c") {
		t.Error("subject a with key bc is stored as subject ab with key c")
	}
}
