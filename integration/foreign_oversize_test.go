package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/bus/bustest"
	"github.com/fnmesh/fnmesh/client"
)

// A Node or Python replica refuses an entry far above its payload limit
// as the Go replica does (TestOversizedEntryKeepsReplicaRSSBounded): its
// peak RSS grows by a small fraction of the entry, the caller is answered
// invalid_argument, the dead letter has the Go replica's reason, the
// payload's first 4096 bytes and too_large, and the replica keeps
// serving.
func TestForeignReplicaRefusesOversizedEntry(t *testing.T) {
	for _, lang := range []struct {
		name  string
		start func(t testing.TB, service, replica string, args ...string) *foreignReplica
	}{{"node", startNodeReplica}, {"python", startPythonReplica}} {
		t.Run(lang.name, func(t *testing.T) {
			ctx := context.Background()
			const size = 128 << 20
			name := bustest.Name("big" + lang.name)
			maker := inspector(t)
			maker.Options().ReadTimeout = 30 * time.Second // Redis may be busy sending the entry to the replica
			// After the replica stops: Redis frees the entry.
			t.Cleanup(func() { maker.Del(context.Background(), bus.RequestTopic(name)) })
			w := lang.start(t, name, name+"-1")
			c := newClient(t, client.Config{Logger: bustest.Quiet, SkipRegistryCheck: true})
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
			if err := maker.Eval(ctx, `return redis.call('XADD', KEYS[1], '*', 'v', '1', 'id', 'big-1', 'fn', 'who', 'rt', ARGV[2], 'p', string.rep('x', tonumber(ARGV[1])))`,
				[]string{bus.RequestTopic(name)}, size, inbox).Err(); err != nil {
				t.Fatal(err)
			}
			const reason = `malformed entry: field "p" of 134217728 bytes exceeds the replica's limit`
			res, err := maker.XRead(ctx, &redis.XReadArgs{Streams: []string{inbox, first}, Count: 1, Block: 60 * time.Second}).Result()
			if err != nil {
				t.Fatalf("no answer to the oversized request (peak RSS %d -> %d MB): %v", before>>10, peakRSSKB(t, w.cmd.Process.Pid)>>10, err)
			}
			after := peakRSSKB(t, w.cmd.Process.Pid)
			if grew := (after - before) << 10; grew > size/8 {
				t.Errorf("%s replica's peak RSS grew by %d MB (%d -> %d MB) for a %d MB entry", lang.name, grew>>20, before>>10, after>>10, size>>20)
			} else {
				t.Logf("%s replica's peak RSS %d -> %d MB while a %d MB entry was refused", lang.name, before>>10, after>>10, size>>20)
			}
			if a := res[0].Messages[0].Values; a[bus.FieldID] != "big-1" || a[bus.FieldCode] != string(fnmesh.CodeInvalidArgument) || a[bus.FieldMessage] != reason {
				t.Errorf("answer %v, want invalid_argument %q", a, reason)
			}
			b := newRedisBus(t, busConfig())
			var dls []bus.DeadLetter
			bustest.Eventually(t, 30*time.Second, "oversized entry not dead-lettered", func() bool {
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
		})
	}
}
