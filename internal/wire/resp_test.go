package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/redis/go-redis/v9"
)

func TestParseStreamReply(t *testing.T) {
	raw := "*1\r\n*2\r\n$3\r\nkey\r\n*3\r\n" +
		"*2\r\n$3\r\n1-1\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$1\r\np\r\n$7\r\n{\"x\":1}\r\n" +
		"*2\r\n$3\r\n1-2\r\n*-1\r\n" +
		"*2\r\n$3\r\n1-3\r\n*2\r\n$1\r\nk\r\n$0\r\n\r\n"
	es, err := ParseStreamReply([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 || es[0].ID != "1-1" || !es[1].Gone || es[2].ID != "1-3" {
		t.Fatalf("%+v", es)
	}
	if p, _ := es[0].Get("p"); p != `{"x":1}` {
		t.Fatalf("payload %q", p)
	}
	if v, ok := es[2].Get("k"); !ok || v != "" {
		t.Fatalf("empty value: %q %v", v, ok)
	}
	if _, err := ParseStreamReply([]byte("*-1\r\n")); !errors.Is(err, redis.Nil) {
		t.Fatalf("nil reply: %v", err)
	}
	_, err = ParseStreamReply([]byte("-NOGROUP No such key\r\n"))
	var re redis.Error
	if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "NOGROUP") {
		t.Fatalf("error reply: %v", err)
	}
}

// An XAUTOCLAIM reply, its entries read as ReadRawReplyMax left them: a
// field above the limit cut to its prefix and marked.
func TestParseAutoClaimReply(t *testing.T) {
	big := strings.Repeat("x", 3*TooLargePrefix)
	reply := "*3\r\n$3\r\n2-0\r\n*2\r\n" +
		"*2\r\n$3\r\n1-1\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$1\r\np\r\n$" + strconv.Itoa(len(big)) + "\r\n" + big + "\r\n" +
		"*-1\r\n" + // Redis 6.2: an entry deleted meanwhile
		"*1\r\n$3\r\n1-0\r\n"
	raw, err := ReadRawReplyMax(bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(reply)), 16), 100)
	if err != nil {
		t.Fatal(err)
	}
	es, next, err := ParseAutoClaimReply(raw)
	if err != nil {
		t.Fatal(err)
	}
	if next != "2-0" || len(es) != 1 || es[0].ID != "1-1" || es[0].TooLarge != "p "+strconv.Itoa(len(big)) {
		t.Fatalf("next %q, entries %+v", next, es)
	}
	if p, _ := es[0].Get("p"); p != big[:TooLargePrefix] {
		t.Fatalf("payload of %d bytes, want its first %d", len(p), TooLargePrefix)
	}
	_, _, err = ParseAutoClaimReply([]byte("-NOGROUP No such key\r\n"))
	var re redis.Error
	if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "NOGROUP") {
		t.Fatalf("error reply: %v", err)
	}
	if _, _, err := ParseAutoClaimReply([]byte("*1\r\n$3\r\n0-0\r\n")); !errors.Is(err, ErrRESP) {
		t.Fatalf("short reply: %v", err)
	}
}

func FuzzParseAutoClaimReply(f *testing.F) {
	f.Add([]byte("*3\r\n$3\r\n0-0\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n*0\r\n"))
	f.Add([]byte("*3\r\n$3\r\n0-0\r\n*1\r\n*-1\r\n*0\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseAutoClaimReply(b) // must not panic, whatever the bytes
	})
}

func FuzzParseStreamReply(f *testing.F) {
	f.Add([]byte("*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n"))
	f.Add([]byte("*-1\r\n"))
	f.Add([]byte("*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*-1\r\n"))
	f.Add([]byte("$5\r\nab"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStreamReply(b) // must not panic, whatever the bytes
	})
}

func TestRespCmd(t *testing.T) {
	var c Cmd
	c.Reset()
	c.Arg("xadd")
	c.Arg("k")
	c.ArgInt(-12)
	c.ArgBytes([]byte("a\r\nb"))
	c.Arg("")
	want := "*5\r\n$4\r\nxadd\r\n$1\r\nk\r\n$3\r\n-12\r\n$4\r\na\r\nb\r\n$0\r\n\r\n"
	if got := string(c.Bytes()); got != want {
		t.Fatalf("encoded %q, want %q", got, want)
	}
	args := c.Args()
	if len(args) != 5 || args[0] != "xadd" || args[2] != "-12" || args[3] != "a\r\nb" || args[4] != "" {
		t.Fatalf("args %q", args)
	}
	// A header of more digits, and a reset that reuses the buffer.
	c.Reset()
	for i := 0; i < 1234; i++ {
		c.ArgAny(i)
	}
	b := c.Bytes()
	if !strings.HasPrefix(string(b), "*1234\r\n$1\r\n0\r\n") {
		t.Fatalf("encoded %q...", b[:20])
	}
	if args := c.Args(); len(args) != 1234 || args[1233] != "1233" {
		t.Fatalf("%d args, last %v", len(args), args[len(args)-1])
	}
}

// ReadReplyErr reads each kind of reply to its end, so that the next one
// starts where it should, and reports errors and nulls.
func TestReadReplyErr(t *testing.T) {
	replies := []struct {
		raw  string
		want string // "" ok, "nil", or the error
	}{
		{"+OK\r\n", ""},
		{":3\r\n", ""},
		{"$5\r\n1-1\r\n\r\n", ""},
		{"$-1\r\n", "nil"},
		{"_\r\n", "nil"},
		{"*-1\r\n", "nil"},
		{"-NOGROUP no such key\r\n", "NOGROUP no such key"},
		{"!10\r\nERR x\r\ny z\r\n", "ERR x\r\ny z"},
		{"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", ""},
		{"%1\r\n+k\r\n$1\r\nv\r\n", ""},
		{",1.5\r\n", ""},
	}
	var all string
	for _, r := range replies {
		all += r.raw
	}
	br := bufio.NewReader(strings.NewReader(all))
	for _, r := range replies {
		replyErr, err := ReadReplyErr(br)
		if err != nil {
			t.Fatalf("%q: %v", r.raw, err)
		}
		got := ""
		switch {
		case errors.Is(replyErr, redis.Nil):
			got = "nil"
		case replyErr != nil:
			got = replyErr.Error()
			var re redis.Error
			if !errors.As(replyErr, &re) {
				t.Errorf("%q: %T is not a redis.Error", r.raw, replyErr)
			}
		}
		if got != r.want {
			t.Errorf("%q: got %q, want %q", r.raw, got, r.want)
		}
	}
	if _, err := ReadReplyErr(br); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last reply: %v, want EOF", err)
	}
	for _, bad := range []string{"?x\r\n", "$x\r\n", "+OK\n", "*2\r\n:1\r\n"} {
		if _, err := ReadReplyErr(bufio.NewReader(strings.NewReader(bad))); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func FuzzReadReplyErr(f *testing.F) {
	f.Add([]byte("*2\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n"))
	f.Add([]byte("!3\r\nERR\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReader(bytes.NewReader(b))
		for i := 0; i < 100; i++ {
			if _, err := ReadReplyErr(br); err != nil {
				return // must end in an error, not a panic, whatever the bytes
			}
		}
	})
}

// ReadRawReply returns each reply's bytes, exactly, whether the reply
// fits in the reader's buffer or not and however the bytes arrive.
func TestReadRawReply(t *testing.T) {
	long := strings.Repeat("x", 100)
	replies := []string{
		"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$100\r\n" + long + "\r\n",
		"*-1\r\n",
		"-NOGROUP x\r\n",
		"%1\r\n+k\r\n*2\r\n:1\r\n$0\r\n\r\n",
	}
	all := strings.Join(replies, "")
	for _, size := range []int{16, 4096} { // 16: longer than the buffer
		for _, oneByte := range []bool{false, true} {
			var src io.Reader = strings.NewReader(all)
			if oneByte {
				src = iotest.OneByteReader(src)
			}
			br := bufio.NewReaderSize(src, size)
			for _, want := range replies {
				got, err := ReadRawReply(br)
				if err != nil || string(got) != want {
					t.Fatalf("size %d, one byte %v: %q, %v; want %q", size, oneByte, got, err, want)
				}
			}
			if _, err := ReadRawReply(br); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last reply: %v", err)
			}
		}
	}
	if _, err := ReadRawReply(bufio.NewReader(strings.NewReader("*1\r\n?\r\n"))); !errors.Is(err, ErrRESP) {
		t.Fatalf("bad reply: %v", err)
	}
}

func FuzzReadRawReply(f *testing.F) {
	f.Add([]byte("*2\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n"), false)
	f.Add([]byte("$40\r\n0123456789012345678901234567890123456789\r\n"), true)
	f.Fuzz(func(t *testing.T, b []byte, small bool) {
		size := 4096
		if small {
			size = 16
		}
		out, err := ReadRawReply(bufio.NewReaderSize(bytes.NewReader(b), size))
		if err != nil {
			return
		}
		if !bytes.HasPrefix(b, out) {
			t.Fatalf("reply %q is not what was read from %q", out, b)
		}
		if end, err := respEnd(out, 0); err != nil || end != len(out) {
			t.Fatalf("reply %q: end %d, %v", out, end, err)
		}
	})
}
