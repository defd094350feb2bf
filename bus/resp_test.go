package bus

import (
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestParseStreamReply(t *testing.T) {
	raw := "*1\r\n*2\r\n$3\r\nkey\r\n*3\r\n" +
		"*2\r\n$3\r\n1-1\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$1\r\np\r\n$7\r\n{\"x\":1}\r\n" +
		"*2\r\n$3\r\n1-2\r\n*-1\r\n" +
		"*2\r\n$3\r\n1-3\r\n*2\r\n$1\r\nk\r\n$0\r\n\r\n"
	es, err := parseStreamReply([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 || es[0].id != "1-1" || !es[1].gone || es[2].id != "1-3" {
		t.Fatalf("%+v", es)
	}
	if p, _ := es[0].get("p"); p != `{"x":1}` {
		t.Fatalf("payload %q", p)
	}
	if v, ok := es[2].get("k"); !ok || v != "" {
		t.Fatalf("empty value: %q %v", v, ok)
	}
	if _, err := parseStreamReply([]byte("*-1\r\n")); !errors.Is(err, redis.Nil) {
		t.Fatalf("nil reply: %v", err)
	}
	_, err = parseStreamReply([]byte("-NOGROUP No such key\r\n"))
	var re redis.Error
	if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "NOGROUP") {
		t.Fatalf("error reply: %v", err)
	}
}

func FuzzParseStreamReply(f *testing.F) {
	f.Add([]byte("*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n"))
	f.Add([]byte("*-1\r\n"))
	f.Add([]byte("*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*-1\r\n"))
	f.Add([]byte("$5\r\nab"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStreamReply(b) // must not panic, whatever the bytes
	})
}
