package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
)

// A Node or Python replica refuses an entry far above its payload limit
// as the Go replica does (TestOversizedEntryKeepsReplicaRSSBounded): its
// peak RSS grows by a small fraction of the entry, the caller is answered
// invalid_argument, the dead letter has the Go replica's reason, the
// payload's first 4096 bytes and too_large, and the replica keeps
// serving. So it does with an entry it takes over (XAUTOCLAIM) from a
// replica that died holding it.
func TestForeignReplicaRefusesOversizedEntry(t *testing.T) {
	for _, lang := range []struct {
		name  string
		start func(t testing.TB, service, replica string, args ...string) *foreignReplica
	}{{"node", startNodeReplica}, {"python", startPythonReplica}} {
		for _, takenOver := range []bool{false, true} {
			sub := lang.name
			if takenOver {
				sub += "-taken-over"
			}
			t.Run(sub, func(t *testing.T) { refuseOversizedEntry(t, lang.name, lang.start, takenOver) })
		}
	}
}

func refuseOversizedEntry(t *testing.T, lang string, start func(t testing.TB, service, replica string, args ...string) *foreignReplica, takenOver bool) {
	ctx := context.Background()
	const size = 128 << 20
	name := meshtest.Name("big" + lang)
	maker := inspector(t)
	maker.Options().ReadTimeout = 30 * time.Second // Redis may be busy sending the entry to the replica
	// After the replica stops: Redis frees the entry.
	t.Cleanup(func() { maker.Del(context.Background(), bus.RequestTopic(name)) })
	var flags []string
	if takenOver {
		flags = []string{"--claim-idle", "1"}
	}
	w := start(t, name, name+"-1", flags...)
	c := newClient(t, client.Config{Logger: meshtest.Quiet, SkipRegistryCheck: true})
	var who string
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil {
		t.Fatal(err)
	}
	before := peakRSSKB(t, w.cmd.Process.Pid)

	inbox := bus.ReplyTopic(name + "-inbox")
	// A replica never makes an inbox (XADD NOMKSTREAM): a caller's.
	first, err := maker.XAdd(ctx, &redis.XAddArgs{Stream: inbox, Values: []string{"made", "by the test"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Taken over: delivered, in the same script, to a replica that
	// then died; the live one's XAUTOCLAIM reads it.
	if err := maker.Eval(ctx, `local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'who', 'rt', ARGV[2], 'p', string.rep('x', tonumber(ARGV[1])))
				if ARGV[3] == '1' then redis.call('XREADGROUP', 'GROUP', 'fnmesh', 'dead', 'COUNT', '1', 'STREAMS', KEYS[1], '>') end
				return id`,
		[]string{bus.RequestTopic(name)}, size, inbox, takenOver).Err(); err != nil {
		t.Fatal(err)
	}
	const reason = `malformed entry: field "p" of 134217728 bytes exceeds the replica's limit`
	res, err := maker.XRead(ctx, &redis.XReadArgs{Streams: []string{inbox, first}, Count: 1, Block: 60 * time.Second}).Result()
	if err != nil {
		t.Fatalf("no answer to the oversized request (peak RSS %d -> %d MB): %v", before>>10, peakRSSKB(t, w.cmd.Process.Pid)>>10, err)
	}
	after := peakRSSKB(t, w.cmd.Process.Pid)
	if grew := (after - before) << 10; grew > size/8 {
		t.Errorf("%s replica's peak RSS grew by %d MB (%d -> %d MB) for a %d MB entry", lang, grew>>20, before>>10, after>>10, size>>20)
	} else {
		t.Logf("%s replica's peak RSS %d -> %d MB while a %d MB entry was refused", lang, before>>10, after>>10, size>>20)
	}
	if a := res[0].Messages[0].Values; a[bus.FieldID] != "big-1" || a[bus.FieldCode] != string(fnmesh.CodeInvalidArgument) || a[bus.FieldMessage] != reason {
		t.Errorf("answer %v, want invalid_argument %q", a, reason)
	}
	b := newRedisBus(t, busConfig())
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 30*time.Second, "oversized entry not dead-lettered", func() bool {
		dls, err = b.DeadLetters(ctx, name, 10)
		return err == nil && len(dls) == 1
	})
	d := dls[0]
	if d.Code != fnmesh.CodeInvalidArgument || d.Reason != reason {
		t.Errorf("dead letter %s %q, want invalid_argument %q", d.Code, d.Reason, reason)
	}
	if string(d.Payload) != strings.Repeat("x", tooLargePrefix) || d.Fields[bus.FieldTooLarge] != "p 134217728" {
		t.Errorf("dead letter keeps %d bytes of the payload and too_large %q, want %d and %q",
			len(d.Payload), d.Fields[bus.FieldTooLarge], tooLargePrefix, "p 134217728")
	}
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil || who != name+"-1" {
		t.Fatalf("call after the oversized entry: %q %v", who, err)
	}
}

// A Node replica's own read connection speaks TLS for rediss:// (trusting
// the CAs Node does, NODE_EXTRA_CA_CERTS included): it serves a Go caller
// over TLS and cuts an oversized field short there too.
func TestNodeReplicaReadsOverTLS(t *testing.T) {
	srv, files := tlsServer(t)
	name := meshtest.Name("tlsnode")
	argv := []string{"node", filepath.Join(nodeJS(t), "dist", "tools", "interop.js"), "serve", name, name + "-1"}
	startForeignReplicaEnv(t, "node", name+"-1", argv, []string{"REDIS_URL=" + srv.URL, "NODE_EXTRA_CA_CERTS=" + files.CAFile}, 20*time.Second, 10*time.Second)

	b := newRedisBus(t, bus.RedisConfig{URL: srv.URL, TLS: srv.TLSConfig})
	t.Cleanup(func() { b.Close() })
	c, err := client.New(b, client.Config{Logger: meshtest.Quiet, SkipRegistryCheck: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	var who string
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil || who != name+"-1" {
		t.Fatalf("call over TLS: %q %v", who, err)
	}
	const size = 4 << 20
	if err := b.Client().Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-tls', 'fn', 'who', 'p', string.rep('x', tonumber(ARGV[1])))`,
		[]string{bus.RequestTopic(name)}, size).Err(); err != nil {
		t.Fatal(err)
	}
	var dls []bus.DeadLetter
	meshtest.Eventually(t, 30*time.Second, "oversized entry not dead-lettered", func() bool {
		dls, err = b.DeadLetters(ctx, name, 10)
		return err == nil && len(dls) == 1
	})
	if d := dls[0]; d.Reason != `malformed entry: field "p" of 4194304 bytes exceeds the replica's limit` || len(d.Payload) != tooLargePrefix {
		t.Fatalf("dead letter %q keeping %d bytes", d.Reason, len(d.Payload))
	}
	if err := c.Call(ctx, name+".who", struct{}{}, &who); err != nil {
		t.Fatalf("call after the oversized entry: %v", err)
	}
}

// A Node or Python caller reads its inbox with a bounded reader: a reply
// with a field far above its maxReplyBytes (16 MiB by default) fails that
// call with resource_exhausted, and the caller's peak RSS grows by a
// small fraction of the field.
func TestForeignCallerRefusesOversizedReply(t *testing.T) {
	for _, lang := range []struct {
		name   string
		caller func(t testing.TB) []string
		start  func(t testing.TB, service, replica string, args ...string) *foreignReplica
	}{
		{"node", func(t testing.TB) []string {
			return []string{"node", filepath.Join(nodeJS(t), "dist", "tools", "interop.js")}
		}, startNodeReplica},
		{"python", func(t testing.TB) []string { return []string{pythonBin, pythonInterop(t)} }, startPythonReplica},
	} {
		t.Run(lang.name, func(t *testing.T) {
			ctx := context.Background()
			const size = 128 << 20
			name := meshtest.Name("bigreply" + lang.name)
			maker := inspector(t)
			maker.Options().ReadTimeout = 30 * time.Second // Redis may be busy sending the reply to the caller
			maker.Options().MaxRetries = -1
			t.Cleanup(func() { maker.Del(context.Background(), bus.RequestTopic(name)) })
			w := lang.start(t, name, name+"-1")

			argv := append(lang.caller(t), "call", name+".sleep", `{"ms":60000}`, "--timeout", "90000")
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
			cmd.Stderr = os.Stderr
			type output struct {
				out []byte
				err error
			}
			done := make(chan output, 1)
			go func() {
				out, err := cmd.Output()
				done <- output{out, err}
			}()
			t.Cleanup(func() { cmd.Process.Kill() })

			// Once the replica holds the request, it dies: the reply comes
			// from the test, its result made by Redis (this process never
			// holds it).
			var id, rt string
			meshtest.Eventually(t, 30*time.Second, "the replica did not take the request", func() bool {
				p, err := maker.XPending(ctx, bus.RequestTopic(name), bus.Group).Result()
				if err != nil || p.Count != 1 {
					return false
				}
				es, err := maker.XRange(ctx, bus.RequestTopic(name), p.Lower, p.Lower).Result()
				if err != nil || len(es) != 1 {
					return false
				}
				id, _ = es[0].Values[bus.FieldID].(string)
				rt, _ = es[0].Values[bus.FieldReplyTo].(string)
				return id != "" && rt != ""
			})
			w.kill9(t)
			if err := maker.Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'by', 'the test', 'p', string.rep('x', tonumber(ARGV[2])))`,
				[]string{rt}, id, size).Err(); err != nil {
				t.Fatal(err)
			}
			var out output
			select {
			case out = <-done:
			case <-time.After(90 * time.Second):
				t.Fatal("the caller did not end its call")
			}
			if out.err != nil {
				t.Fatalf("%s caller: %v\n%s", lang.name, out.err, out.out)
			}
			var o struct {
				nodeOutcome
				RSSBeforeKB int64 `json:"rss_before_kb"`
				RSSPeakKB   int64 `json:"rss_peak_kb"`
			}
			if err := json.Unmarshal(bytes.TrimSpace(out.out), &o); err != nil || o.RSSPeakKB == 0 {
				t.Fatalf("%s caller printed %q: %v", lang.name, out.out, err)
			}
			want := fmt.Sprintf(`the reply's field "p" of %d bytes exceeds this client's limit of %d`, size, 16<<20)
			if o.OK || o.Code != fnmesh.CodeResourceExhausted || !strings.HasPrefix(o.Message, want) {
				t.Errorf("outcome %+v, want resource_exhausted %q", o.nodeOutcome, want)
			}
			if grew := (o.RSSPeakKB - o.RSSBeforeKB) << 10; grew > size/8 {
				t.Errorf("%s caller's peak RSS grew by %d MB (%d -> %d MB) for a %d MB reply", lang.name, grew>>20, o.RSSBeforeKB>>10, o.RSSPeakKB>>10, size>>20)
			} else {
				t.Logf("%s caller's peak RSS %d -> %d MB while a %d MB reply was refused", lang.name, o.RSSBeforeKB>>10, o.RSSPeakKB>>10, size>>20)
			}
		})
	}
}
