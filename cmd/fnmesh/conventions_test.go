package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redistest"
	"github.com/fnmesh/fnmesh/meshtest"
	"github.com/fnmesh/fnmesh/registry"
)

// runApp runs the command line as main does and returns what it printed
// and its exit status.
func runApp(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(flagsFirst(app, append([]string{"fnmesh"}, args...)))
	code = report(app, err, &errOut)
	return out.String(), errOut.String(), code
}

func TestVersion(t *testing.T) {
	out, _, code := runApp(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "fnmesh version ") || strings.Contains(out, "USAGE") {
		t.Fatalf("--version: exit %d, %q", code, out)
	}
}

// Usage errors exit 2 wherever they are caught; failures exit 1 with
// their code first.
func TestExitCodes(t *testing.T) {
	usage := [][]string{
		{"nosuch"},
		{"call", "--bogus", "x", "math.add", "{}"},
		{"call", "math.add"},
		{"call", "math.add", "{not json"},
		{"bench", "--mode", "bogus"},
		{"completion", "fish"},
		{"describe"},
		{"top", "--interval", "0s"},
	}
	for _, args := range usage {
		_, stderr, code := runApp(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
	if _, stderr, _ := runApp(t, "bench", "--mode", "bogus"); !strings.Contains(stderr, "raw-send, scale") {
		t.Errorf("bench --mode bogus does not list every mode: %s", stderr)
	}
	_, stderr, code := runApp(t, "ls", "--redis", "redis://127.0.0.1:1")
	if code != 1 || !strings.HasPrefix(stderr, "fnmesh: unavailable: ") {
		t.Errorf("ls with Redis down: exit %d, %q; want 1 and the code first", code, stderr)
	}
}

func TestCompletion(t *testing.T) {
	bash, _, code := runApp(t, "completion", "bash")
	if code != 0 || !strings.Contains(bash, "complete -o bashdefault -o default -F _fnmesh_bash_complete fnmesh") {
		t.Fatalf("completion bash: exit %d\n%s", code, bash)
	}
	zsh, _, _ := runApp(t, "completion", "zsh")
	if !strings.HasPrefix(zsh, "#compdef fnmesh") {
		t.Fatalf("completion zsh:\n%s", zsh)
	}
	// What the scripts ask the binary for. (urfave/cli reads os.Args to
	// tell flag completion from command completion.)
	defer func(args []string) { os.Args = args }(os.Args)
	os.Args = []string{"fnmesh", "--generate-bash-completion"}
	words, _, _ := runApp(t, "--generate-bash-completion")
	for _, c := range []string{"call", "send", "top", "dlq", "completion"} {
		if !strings.Contains(words, c+"\n") {
			t.Errorf("completion candidates lack %s:\n%s", c, words)
		}
	}
	os.Args = []string{"fnmesh", "dlq", "--generate-bash-completion"}
	sub, _, _ := runApp(t, "dlq", "--generate-bash-completion")
	if !strings.Contains(sub, "replay\n") {
		t.Errorf("dlq completion candidates lack replay:\n%s", sub)
	}
}

// mathOnRedis serves test.add(a, b>=0) on the test Redis and returns its URL.
func mathOnRedis(t *testing.T) (url, service string) {
	t.Helper()
	url, err := redistest.URL()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.NewRedis(bus.RedisConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	service = meshtest.Name("clitest")
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	meshtest.NewHarness(t, b).Start(svc)
	return url, service
}

// An error of a call made with --json is JSON on stdout: code, message,
// fields and request id, so that a script can read a validation error.
func TestCallJSONErrors(t *testing.T) {
	url, service := mathOnRedis(t)
	out, _, code := runApp(t, "call", service+".add", `{"a":1,"b":-1}`, "--json", "--redis", url)
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("exit %d, not JSON: %v\n%s", code, err, out)
	}
	if code != 1 || raw["code"] != "invalid_argument" || raw["request_id"] == "" || raw["request_id"] == nil {
		t.Fatalf("exit %d: %s", code, out)
	}
	fields, _ := raw["fields"].([]any)
	if len(fields) != 1 || !strings.Contains(out, `"b"`) {
		t.Fatalf("fields of the validation error: %s", out)
	}
	out, _, code = runApp(t, "call", service+".add", `{"a":1,"b":2}`, "--json", "--redis", url)
	if code != 0 || strings.TrimSpace(out) != `{"sum":3}` {
		t.Fatalf("call --json: exit %d, %q", code, out)
	}
	out, _, code = runApp(t, "send", service+".add", `{"a":1,"b":2}`, "--json", "--redis", url)
	if err := json.Unmarshal([]byte(out), &raw); code != 0 || err != nil || raw["request_id"] == "" {
		t.Fatalf("send --json: exit %d, %q", code, out)
	}
}

// `-` reads the arguments from stdin.
func TestCallReadsArgumentsFromStdin(t *testing.T) {
	url, service := mathOnRedis(t)
	for _, tc := range []struct{ stdin, want string }{
		{"{\"a\":2,\"b\":5}\n", `{"sum":7}`},
		{"{not json", "not valid JSON"},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(tc.stdin)
		w.Close()
		old := os.Stdin
		os.Stdin = r
		out, stderr, _ := runApp(t, "call", service+".add", "-", "--redis", url)
		os.Stdin = old
		r.Close()
		if !strings.Contains(out+stderr, tc.want) {
			t.Errorf("stdin %q: %q %q, want %q", tc.stdin, out, stderr, tc.want)
		}
	}
}

// Off a terminal, top prints plain frames one after another, without
// the escapes that clear a screen; with --json one object per line.
func TestTopOffTerminal(t *testing.T) {
	url, _ := mathOnRedis(t)
	b, err := bus.NewRedis(bus.RedisConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	store := registry.NewRedisStore(b.Client())
	for _, asJSON := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 350*time.Millisecond)
		var out bytes.Buffer
		err := runTop(ctx, &out, store, 100*time.Millisecond, false, asJSON, isTerminal(&out))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out.String(), "\x1b") {
			t.Errorf("json=%v: escapes in output to a non-terminal: %q", asJSON, out.String())
		}
		if !asJSON {
			if strings.Count(out.String(), "FUNCTION") < 2 {
				t.Errorf("want two or more plain frames:\n%s", out.String())
			}
			continue
		}
		sc := bufio.NewScanner(&out)
		n := 0
		for sc.Scan() {
			var frame struct {
				Functions []map[string]any `json:"functions"`
			}
			if err := json.Unmarshal(sc.Bytes(), &frame); err != nil || frame.Functions == nil {
				t.Errorf("not a JSON frame: %q %v", sc.Text(), err)
			}
			n++
		}
		if n < 2 {
			t.Errorf("want two or more JSON frames, got %d", n)
		}
	}
}

// Every command's help states each flag's default once.
func TestHelpStatesDefaultsOnce(t *testing.T) {
	var walk func(prefix []string, cmds []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			args := append(append([]string{}, prefix...), c.Name)
			walk(args, c.Subcommands)
			out, _, code := runApp(t, append(args, "--help")...)
			if code != 0 {
				t.Errorf("%v --help: exit %d", args, code)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Count(line, "(default") > 1 {
					t.Errorf("%v --help: %s", args, strings.TrimSpace(line))
				}
			}
		}
	}
	walk(nil, newApp().Commands)
}
