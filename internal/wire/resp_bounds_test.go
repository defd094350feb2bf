package wire

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// fakeServer serves every connection the bytes of reply and then zeros,
// up to total bytes, and closes it: a faulty server, or anything in the
// path of a plain connection.
func fakeServer(t *testing.T, reply string, total int) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(reply))
		zeros := make([]byte, 64<<10)
		for sent := len(reply); sent < total; sent += len(zeros) {
			if _, err := c.Write(zeros); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// allocated returns the bytes f allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A server declaring a huge bulk string, blob error or array gets a clear
// error (above proto-max-bulk-len), or, within it, only as much memory as
// it sends: no buffer is sized from a declared length.
func TestRESPReadersBoundDeclaredLengths(t *testing.T) {
	const sent = 8 << 20 // what the fake server really sends
	readers := map[string]func(*bufio.Reader) error{
		"ReadRawReply": func(br *bufio.Reader) error { _, err := ReadRawReply(br); return err },
		"ReadReplyErr": func(br *bufio.Reader) error { _, err := ReadReplyErr(br); return err },
	}
	for _, c := range []struct {
		reply    string
		tooLarge bool // refused from the header
	}{
		{"$10000000000\r\n", true},
		{"$9999999999\r\n", true},
		{"$536870913\r\n", true},
		{"*1\r\n$536870913\r\n", true},
		{"!9999999999\r\n", true},
		{"*9999999999\r\n", true},
		{"$536870912\r\n", false}, // allowed, but the server sends 8 MB and hangs up
		{"*2\r\n$1\r\na\r\n$400000000\r\n", false},
		{"!400000000\r\n", false},
	} {
		for name, read := range readers {
			var err error
			n := allocated(func() {
				err = read(bufio.NewReaderSize(fakeServer(t, c.reply, sent), 32<<10))
			})
			if err == nil {
				t.Errorf("%s(%q): no error", name, c.reply)
				continue
			}
			if c.tooLarge && !errors.Is(err, ErrRESP) {
				t.Errorf("%s(%q): %v, want a protocol error", name, c.reply, err)
			}
			if !c.tooLarge && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Errorf("%s(%q): %v, want the end of the connection", name, c.reply, err)
			}
			if n > 8*sent { // a growing buffer copies itself as it doubles
				t.Errorf("%s(%q): allocated %d MB for %d MB received", name, c.reply, n>>20, sent>>20)
			}
		}
	}
}

// Replies nested a million deep are refused past maxDepth: no stack
// growth with the depth a server declares.
func TestRESPReadersBoundNesting(t *testing.T) {
	deep := strings.Repeat("*1\r\n", 1_000_000) + ":1\r\n"
	if _, err := ReadRawReply(bufio.NewReader(strings.NewReader(deep))); !errors.Is(err, ErrRESP) {
		t.Errorf("ReadRawReply: %v, want a protocol error", err)
	}
	if _, err := ReadReplyErr(bufio.NewReader(strings.NewReader(deep))); !errors.Is(err, ErrRESP) {
		t.Errorf("ReadReplyErr: %v, want a protocol error", err)
	}
	if _, err := respEnd([]byte(deep), 0); !errors.Is(err, ErrRESP) {
		t.Errorf("respEnd: %v, want a protocol error", err)
	}
	// maxDepth itself is fine.
	ok := strings.Repeat("*1\r\n", maxDepth) + ":1\r\n"
	if out, err := ReadRawReply(bufio.NewReader(strings.NewReader(ok))); err != nil || string(out) != ok {
		t.Errorf("ReadRawReply at depth %d: %v", maxDepth, err)
	}
}

// goRedisReply has go-redis read raw as a server's reply to a command,
// through a connection that answers its handshake and then that command
// with raw: go-redis's own reader, which the package cannot import.
func goRedisReply(raw []byte) (any, error) {
	client, server := net.Pipe()
	go fakeRedis(server, raw)
	rdb := redis.NewClient(&redis.Options{
		Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 1,
		ReadTimeout: time.Second, WriteTimeout: time.Second,
		Dialer: func(context.Context, string, string) (net.Conn, error) { return client, nil },
	})
	defer rdb.Close()
	return rdb.Do(context.Background(), "fuzz").Result()
}

// fakeRedis answers each command on c: HELLO with an error (go-redis then
// speaks RESP2), "fuzz" with raw, anything else with +OK.
func fakeRedis(c net.Conn, raw []byte) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		cmd, err := ReadRawReply(br)
		if err != nil {
			return
		}
		var reply []byte
		switch {
		case bytes.Contains(bytes.ToLower(cmd), []byte("hello")):
			reply = []byte("-ERR unknown command\r\n")
		case bytes.Contains(cmd, []byte("fuzz")):
			reply = raw
		default:
			reply = []byte("+OK\r\n")
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

var goRedisMu sync.Mutex

// FuzzRESPReadersAgainstGoRedis: what the bus's readers take as one
// whole reply, go-redis reads too (as a value or the server's error); the
// readers agree with each other on where it ends; neither allocates far
// beyond the input.
func FuzzRESPReadersAgainstGoRedis(f *testing.F) {
	for _, s := range []string{
		"+OK\r\n", "-ERR x\r\n", ":1\r\n", "$3\r\nabc\r\n", "$-1\r\n", "*-1\r\n", "*0\r\n",
		"*2\r\n$1\r\na\r\n*1\r\n:2\r\n", "*1\r\n*2\r\n$7\r\nstream1\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n",
		"$9999999999\r\n", "*1\r\n*1\r\n*1\r\n:1\r\n", "_\r\n", "%1\r\n+a\r\n:1\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		raw, rawErr := ReadRawReply(bufio.NewReader(bytes.NewReader(b)))
		br := bufio.NewReader(bytes.NewReader(b))
		_, errErr := ReadReplyErr(br)
		if (rawErr == nil) != (errErr == nil) {
			t.Fatalf("ReadRawReply: %v; ReadReplyErr: %v", rawErr, errErr)
		}
		if rawErr != nil {
			return
		}
		if consumed := len(b) - br.Buffered(); consumed != len(raw) {
			t.Fatalf("ReadRawReply read %d bytes, ReadReplyErr %d", len(raw), consumed)
		}
		if raw[0] == '_' || raw[0] == ',' || raw[0] == '#' || raw[0] == '(' || raw[0] == '=' || raw[0] == '~' || raw[0] == '%' || raw[0] == '|' || raw[0] == '>' || raw[0] == '!' || bytes.ContainsAny(raw, "_,#(=~%|>!") {
			// RESP3 types: go-redis reads them only after HELLO 3.
			return
		}
		goRedisMu.Lock()
		defer goRedisMu.Unlock()
		if _, err := goRedisReply(raw); err != nil && !errors.Is(err, redis.Nil) {
			var re redis.Error
			if !errors.As(err, &re) {
				t.Fatalf("the bus reads %q as one reply; go-redis: %v", raw, err)
			}
		}
	})
}
