package fnmesh_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's quickstart builds and runs as a module outside this
// repository: the snippet is read from README.md itself, so the test
// fails when the README and the API drift apart.
func TestReadmeQuickstartAsOutsideModule(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- quickstart:main.go -->\\s*```go\\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no quickstart snippet (<!-- quickstart:main.go --> followed by a go block)")
	}
	repo, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"main.go": string(m[1]),
		"go.mod": "module example.com/hello\n\ngo 1.26.0\n\nrequire github.com/fnmesh/fnmesh v0.0.0\n\n" +
			"replace github.com/fnmesh/fnmesh => " + repo + "\n",
		// The repository's sums cover everything the snippet can need, so
		// no download is verified against the network.
		"go.sum": string(sum),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goCmd := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	goCmd("mod", "tidy")
	out := goCmd("run", ".")
	want := "3 <nil>\ninvalid_argument: arguments of math.add failed validation: b (gte=0)\n"
	if out != want {
		t.Fatalf("the quickstart printed\n%s\nwant\n%s", out, want)
	}
	// What the snippet's comments promise is what it prints.
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		if !strings.Contains(string(m[1]), "// "+line) {
			t.Errorf("the snippet's comments do not show %q", line)
		}
	}
}
