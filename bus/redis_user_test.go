package bus_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/fnmesh/fnmesh/bus"
)

// A Redis user name is part of the caller's inbox name, which the caller
// ACL of docs/SECURITY.md matches with a key pattern. A name that could
// widen the pattern or move the Cluster hash tag is refused when the bus
// is made, before any key is named after it; a plain one names the inbox.
func TestRedisUserNamesInboxes(t *testing.T) {
	for _, user := range []string{"a*", "a?b", "a[b]", "a{b", "a}b", "a:b", "a b", "a\\b", strings.Repeat("u", 65), "ü"} {
		b, err := bus.NewRedis(bus.RedisConfig{URL: redisURLFor(user)})
		if err == nil {
			b.Close()
			t.Errorf("user %q: accepted", user)
			continue
		}
		if !strings.Contains(err.Error(), "cannot name inboxes") {
			t.Errorf("user %q: %v", user, err)
		}
	}
	for _, user := range []string{"caller_1", "svc-a.prod", strings.Repeat("u", 64)} {
		b, err := bus.NewRedis(bus.RedisConfig{URL: redisURLFor(user)})
		if err != nil {
			t.Errorf("user %q: %v", user, err)
			continue
		}
		inbox := bus.InboxTopic(b, "r4nd0m")
		b.Close()
		if want := bus.ReplyTopic(user + ":r4nd0m"); inbox != want {
			t.Errorf("user %q: inbox %q, want %q", user, inbox, want)
		}
	}
}

// redisURLFor is a Redis URL logging in as user, escaped as it must be.
func redisURLFor(user string) string {
	return (&url.URL{Scheme: "redis", User: url.UserPassword(user, "pw"), Host: "127.0.0.1:1"}).String()
}
