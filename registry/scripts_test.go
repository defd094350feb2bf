package registry

import (
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// The TypeScript and Python replicas announce with the Go replica's
// script (docs/PROTOCOL.md §14): their copies are the same text.
func TestForeignBeatScriptsAreGos(t *testing.T) {
	for _, c := range []struct{ path, name string }{
		{"../client/js/src/announce.ts", "beatScript"},
		{"../client/python/fnmesh/worker.py", "_BEAT"},
	} {
		text, err := redistest.ForeignScript(c.path, c.name)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha1.Sum([]byte(text)); hex.EncodeToString(sum[:]) != beatScript.Hash() {
			t.Errorf("%s in %s differs from the Go replica's script:\n%s", c.name, c.path, text)
		}
	}
}
