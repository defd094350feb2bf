package bus

import (
	"testing"

	"github.com/fnmesh/fnmesh/internal/wire"
)

// A request's XADD names its stream without making the name, names
// the same stream as FunctionTopic, and never creates it (NOMKSTREAM).
func TestXAddRequestStream(t *testing.T) {
	for _, c := range []struct{ service, function, want string }{
		{"math", "add", "fnmesh:{math}:req"},
		{"math", "add@v2", "fnmesh:{math}:req:add@v2"},
	} {
		if got := FunctionTopic(c.service, c.function); got != c.want {
			t.Errorf("FunctionTopic(%q, %q) = %q, want %q", c.service, c.function, got, c.want)
		}
		var a, b wire.Cmd
		a.Reset()
		xaddRequest(&a, c.service, c.function, 7)
		b.Reset()
		b.XAdd(c.want, true, 7) // NOMKSTREAM: only a replica makes the stream
		if string(a.Bytes()) != string(b.Bytes()) {
			t.Errorf("%s: %q, want %q", c.want, a.Bytes(), b.Bytes())
		}
	}
}
