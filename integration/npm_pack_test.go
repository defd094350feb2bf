package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/meshtest"
)

// The npm package as a user gets it: packed from a clean copy of
// client/js (no dist/: the prepare script builds it), its tarball
// installed into a scratch project, which calls a Go function through it
// against the test Redis.
func TestNPMPackageCallsGo(t *testing.T) {
	t.Parallel()
	nodeJS(t) // node and client/js's node_modules are there
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatal("npm not found: install it (Debian: apt-get install npm)")
	}
	src, err := filepath.Abs("../client/js")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	clean := filepath.Join(work, "checkout")
	if err := os.MkdirAll(clean, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"src", "test", "tools", "package.json", "package-lock.json", "tsconfig.json", "README.md", "LICENSE"} {
		if out, err := exec.Command("cp", "-R", filepath.Join(src, name), clean).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v\n%s", name, err, out)
		}
	}
	if err := os.Symlink(filepath.Join(src, "node_modules"), filepath.Join(clean, "node_modules")); err != nil {
		t.Fatal(err)
	}
	npm := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("npm", append(args, "--no-audit", "--no-fund", "--loglevel=error")...)
		cmd.Dir = dir
		cmd.Stdin = nil
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := npm(clean, "pack", "--pack-destination", work)
	lines := strings.Fields(strings.TrimSpace(out))
	tarball := filepath.Join(work, lines[len(lines)-1])
	if !strings.HasSuffix(tarball, ".tgz") {
		t.Fatalf("npm pack printed %q", out)
	}

	// What the tarball holds: the build, its sources (the source maps
	// point at them), README and LICENSE; no tests.
	unpacked := filepath.Join(work, "unpacked")
	os.MkdirAll(unpacked, 0o755)
	if out, err := exec.Command("tar", "xzf", tarball, "-C", unpacked).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	pkg := filepath.Join(unpacked, "package")
	for _, f := range []string{"dist/src/index.js", "dist/src/index.d.ts", "src/index.ts", "README.md", "LICENSE", "package.json"} {
		if _, err := os.Stat(filepath.Join(pkg, f)); err != nil {
			t.Errorf("the package lacks %s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(pkg, "dist", "test")); err == nil {
		t.Error("the package ships its tests")
	}
	maps, _ := filepath.Glob(filepath.Join(pkg, "dist", "src", "*.js.map"))
	if len(maps) == 0 {
		t.Error("no source maps in dist/src")
	}
	for _, m := range maps {
		var sm struct{ Sources []string }
		b, _ := os.ReadFile(m)
		if err := json.Unmarshal(b, &sm); err != nil || len(sm.Sources) == 0 {
			t.Errorf("%s: %v", m, err)
			continue
		}
		for _, s := range sm.Sources {
			if _, err := os.Stat(filepath.Join(filepath.Dir(m), s)); err != nil {
				t.Errorf("%s points at %s, not in the package", filepath.Base(m), s)
			}
		}
	}
	var meta struct {
		License      string
		Repository   struct{ URL string }
		Dependencies map[string]string
	}
	b, _ := os.ReadFile(filepath.Join(pkg, "package.json"))
	json.Unmarshal(b, &meta)
	if meta.License != "MIT" || meta.Repository.URL == "" || !strings.HasPrefix(meta.Dependencies["redis"], "^") {
		t.Errorf("package.json: license %q, repository %q, redis %q", meta.License, meta.Repository.URL, meta.Dependencies["redis"])
	}

	// A scratch project installs the tarball (its dependencies come from
	// the npm cache when they are there, else from the registry).
	scratch := filepath.Join(work, "scratch")
	os.MkdirAll(scratch, 0o755)
	os.WriteFile(filepath.Join(scratch, "package.json"), []byte(`{"name":"scratch","private":true,"type":"module"}`), 0o644)
	npm(scratch, "install", "--prefer-offline", tarball)
	os.WriteFile(filepath.Join(scratch, "call.mjs"), []byte(`
import { connect, FnmeshError } from "@fnmesh/client";
const client = await connect({ url: process.env.REDIS_URL });
try {
  const sum = await client.call(process.argv[2] + ".add", { a: 20, b: 22 }, { timeoutMs: 20000 });
  let code = "";
  try { await client.call(process.argv[2] + ".add", { a: 1, b: -1 }, { timeoutMs: 20000 }); }
  catch (e) { code = e instanceof FnmeshError ? e.code : String(e); }
  console.log(JSON.stringify({ sum, code }));
} finally {
  await client.close();
}
`), 0o644)

	service := meshtest.Name("npmpack")
	h := meshtest.NewHarness(t, newRedisBus(t, busConfig()))
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "call.mjs", service)
	cmd.Dir = scratch
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node call.mjs: %v\n%s", err, got)
	}
	var res struct {
		Sum  meshtest.AddOut
		Code string
	}
	if err := json.Unmarshal(got, &res); err != nil || res.Sum.Sum != 42 || res.Code != "invalid_argument" {
		t.Fatalf("the installed package called Go: %s (%v)", got, err)
	}
}
