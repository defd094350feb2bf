package bus

import (
	"crypto/sha1"
	"encoding/hex"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// The TypeScript and Python replicas run the Go replica's idempotency
// scripts (docs/PROTOCOL.md §12): their copies are the same text.
func TestForeignIdempotencyScriptsAreGos(t *testing.T) {
	for _, c := range []struct {
		path, name string
		goScript   *redis.Script
	}{
		{"../client/js/src/worker.ts", "IDEM_BEGIN", idemBegin},
		{"../client/js/src/worker.ts", "IDEM_RELEASE", idemRelease},
		{"../client/python/fnmesh/worker.py", "_IDEM_BEGIN", idemBegin},
		{"../client/python/fnmesh/worker.py", "_IDEM_RELEASE", idemRelease},
	} {
		text, err := redistest.ForeignScript(c.path, c.name)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha1.Sum([]byte(text)); hex.EncodeToString(sum[:]) != c.goScript.Hash() {
			t.Errorf("%s in %s differs from the Go replica's script:\n%s", c.name, c.path, text)
		}
	}
}
