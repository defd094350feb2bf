package wire

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

// A hot connection sets itself up as a go-redis client with the same
// options would, without one: it logs in as the ACL user, selects the
// database, names itself, and knows its CLIENT ID. A wrong password is
// the server's error, and a client with an OnConnect hook, which it
// cannot repeat, is left to go-redis.
func TestConnSetsItselfUp(t *testing.T) {
	srv, err := redistest.Start(redistest.Options{Users: []string{"hot on >hot-secret ~* &* +@all"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "hot", Password: "hot-secret", DB: 3, ClientName: "fnmesh-hot"})
	t.Cleanup(func() { rdb.Close() })
	d := NewDialer(*rdb.Options())
	if d == nil {
		t.Fatal("no dialer for a plain client")
	}
	w, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var info Cmd
	info.Reset()
	info.Arg("CLIENT")
	info.Arg("INFO")
	raw, err := w.Exchange(info.Bytes(), MaxBulkLen)
	if err != nil {
		t.Fatal(err)
	}
	r := reader{b: raw}
	line, _, err := r.bulk()
	if err != nil {
		t.Fatalf("CLIENT INFO: %q %v", raw, err)
	}
	for _, want := range []string{"id=" + strconv.FormatInt(w.id, 10) + " ", "name=fnmesh-hot ", "db=3 ", "user=hot "} {
		if !strings.Contains(line, want) {
			t.Errorf("CLIENT INFO %q lacks %q", line, want)
		}
	}

	bad := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "hot", Password: "wrong"})
	t.Cleanup(func() { bad.Close() })
	if _, err := NewDialer(*bad.Options()).Dial(ctx); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
	hooked := redis.NewClient(&redis.Options{Addr: srv.Addr, OnConnect: func(context.Context, *redis.Conn) error { return nil }})
	t.Cleanup(func() { hooked.Close() })
	if NewDialer(*hooked.Options()) != nil {
		t.Fatal("a client with an OnConnect hook got a wire dialer")
	}
}
