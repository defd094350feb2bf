package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/meshtest"
)

func redisCLI(t *testing.T) string {
	p, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found (Debian package redis-tools, installed with redis-server): %v", err)
	}
	return p
}

// The redis-cli example in docs/PROTOCOL.md, run as written against a
// math replica.
func TestProtocolDocRedisCLIExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)<!-- redis-cli example.*?```sh\n(.*?)```").FindSubmatch(doc)
	if block == nil {
		t.Fatal("no redis-cli example block in docs/PROTOCOL.md")
	}
	var cmds []string
	for _, l := range strings.Split(string(block[1]), "\n") {
		if strings.HasPrefix(l, "redis-cli ") {
			cmds = append(cmds, l)
		}
	}
	if len(cmds) < 4 {
		t.Fatalf("example has %d redis-cli commands: %q", len(cmds), cmds)
	}
	// The doc's keys are fixed ("math", "cli-1"): this test owns them.
	b := newRedisBus(t, busConfig())
	b.Client().Del(context.Background(), bus.RequestTopic("math"), bus.ReplyTopic("cli-1"))
	h := meshtest.NewHarness(t, b)
	h.Start(examples.Math(handlers.Config{AllowUnauthenticated: true, ReplicaID: "doc-replica", Logger: meshtest.Quiet}))

	cli := redisCLI(t)
	var last string
	for _, c := range cmds {
		line := strings.Replace(c, "redis-cli ", cli+" -u "+redisURL+" ", 1)
		out, err := exec.Command("sh", "-c", line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", c, err, out)
		}
		last = string(out)
	}
	t.Logf("reply read by the example:\n%s", last)
	for _, want := range []string{"hello", "req-1", "doc-replica", `{"value":3,`} {
		if !strings.Contains(last, want) {
			t.Errorf("the example's XREAD output lacks %q", want)
		}
	}
}

// Entries a person or a broken producer adds by hand with redis-cli:
// each is answered when it names an inbox, dead-lettered, acked, and the
// replica goes on serving.
func TestGarbageFromRedisCLI(t *testing.T) {
	t.Parallel()
	service := meshtest.Name("garbage")
	b := newRedisBus(t, busConfig())
	h := meshtest.NewHarness(t, b)
	svc := handlers.NewService(service, handlers.Config{AllowUnauthenticated: true, Logger: meshtest.Quiet, MaxPayloadBytes: 1 << 16})
	handlers.Register(svc, "add", func(_ context.Context, in meshtest.AddIn) (meshtest.AddOut, error) {
		return meshtest.AddOut{Sum: in.A + in.B}, nil
	})
	h.Start(svc)
	inbox := bus.ReplyTopic(meshtest.Name("cli"))
	key := bus.RequestTopic(service)
	cli := redisCLI(t)
	run := func(stdin string, args ...string) {
		cmd := exec.Command(cli, append([]string{"-u", redisURL}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("redis-cli %v: %v %s", args, err, out)
		}
	}
	run("", "XADD", inbox, "*", "hello", "inbox")
	run("", "EXPIRE", inbox, "60")
	run("", "XADD", key, "*", "foo", "bar")                                                             // no id, no fn
	run("", "XADD", key, "*", "id", "g1", "fn", "add", "rt", inbox, "p", "not json")                    // broken payload
	run("", "XADD", key, "*", "id", "g2", "fn", "nosuch", "rt", inbox, "p", "{}")                       // unknown function
	run("", "XADD", key, "*", "id", "g3", "fn", "add", "rt", inbox, "dl", "tomorrow")                   // bad deadline
	run("", "XADD", key, "*", "id", "g4", "v", "7", "fn", "add", "rt", inbox)                           // unknown version
	run(strings.Repeat("x", 100000), "-x", "XADD", key, "*", "id", "g5", "fn", "add", "rt", inbox, "p") // too large
	run("", "XADD", key, "*", "id", "g6", "fn", "add", "rt", "victim:key", "p", "{}")                   // reply to a foreign key

	want := map[string]fnmesh.Code{"g1": fnmesh.CodeInvalidArgument, "g2": fnmesh.CodeNotFound, "g3": fnmesh.CodeInvalidArgument, "g4": fnmesh.CodeInvalidArgument, "g5": fnmesh.CodeInvalidArgument}
	rdb := b.Client()
	got := map[string]string{}
	meshtest.Eventually(t, 10*time.Second, "replies to garbage", func() bool {
		xs, _ := rdb.XRange(context.Background(), inbox, "-", "+").Result()
		for _, x := range xs {
			if id, ok := x.Values["id"].(string); ok {
				got[id] = fmt.Sprint(x.Values["code"])
			}
		}
		return len(got) == len(want)
	})
	for id, code := range want {
		if got[id] != string(code) {
			t.Errorf("entry %s answered %q, want %s", id, got[id], code)
		}
	}
	meshtest.Eventually(t, 10*time.Second, "garbage not all dead-lettered", func() bool {
		dls, _ := b.DeadLetters(context.Background(), service, 100)
		return len(dls) == 7
	})
	if n := rdb.Exists(context.Background(), "victim:key").Val(); n != 0 {
		t.Fatal("a replica wrote to a key that is not an inbox")
	}
	// The acks follow the dead letters (they ride along with the next
	// round trip of the replica).
	meshtest.Eventually(t, 10*time.Second, "garbage entries left pending, want all acked", func() bool {
		pending, err := rdb.XPending(context.Background(), key, bus.Group).Result()
		return err == nil && pending.Count == 0
	})
	c := newClient(t, client.Config{})
	var out meshtest.AddOut
	if err := c.Call(context.Background(), service+".add", meshtest.AddIn{A: 20, B: 22}, &out); err != nil || out.Sum != 42 {
		t.Fatalf("replica stopped serving after garbage: %v %+v", err, out)
	}
}
