package fnmesh_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// scripts/deps (make deps, which make test runs first) stops before
// anything runs when a tool is missing and it cannot install it (not
// root), and says exactly what to install.
func TestDepsSaysWhatToInstall(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	// A PATH with no redis, node, npm or chromium, and an id that says
	// "not root".
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "id"), []byte("#!/bin/sh\necho 1000\n"), 0o755)
	cat, _ := exec.LookPath("cat")
	os.Symlink(cat, filepath.Join(bin, "cat"))
	cmd := exec.Command(bash, "scripts/deps")
	cmd.Env = []string{"PATH=" + bin}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("deps succeeded without the tools:\n%s", out)
	}
	for _, pkg := range []string{"redis-server", "redis-tools", "nodejs", "npm", "apt-get install -y"} {
		if !strings.Contains(string(out), pkg) {
			t.Errorf("deps does not name %s:\n%s", pkg, out)
		}
	}
}
