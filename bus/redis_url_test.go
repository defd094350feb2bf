package bus

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh"
)

func TestParseRedisURL(t *testing.T) {
	tests := []struct {
		url   string
		topo  Topology
		addrs []string // seeds, sentinels, or the one server
		check func(t *testing.T, u *RedisURL)
	}{
		{url: "redis://127.0.0.1:6380", topo: Single, addrs: []string{"127.0.0.1:6380"}},
		{url: "redis://u:pw@h:1/3", topo: Single, addrs: []string{"h:1"}, check: func(t *testing.T, u *RedisURL) {
			if u.Single.DB != 3 || u.Single.Username != "u" || u.Single.Password != "pw" {
				t.Errorf("options %+v", u.Single)
			}
		}},
		{url: "rediss://h:1", topo: Single, addrs: []string{"h:1"}, check: func(t *testing.T, u *RedisURL) {
			if u.Single.TLSConfig == nil {
				t.Error("rediss without TLS")
			}
		}},
		{url: "unix:///run/redis.sock", topo: Single, addrs: []string{"/run/redis.sock"}},
		{url: "redis+cluster://h1:7000", topo: Cluster, addrs: []string{"h1:7000"}},
		{url: "redis+cluster://:pw@h1:7000?addr=h2:7001&addr=h3:7002&dial_timeout=3s", topo: Cluster, addrs: []string{"h1:7000", "h2:7001", "h3:7002"}, check: func(t *testing.T, u *RedisURL) {
			if u.Cluster.Password != "pw" || u.Cluster.DialTimeout.Seconds() != 3 {
				t.Errorf("options %+v", u.Cluster)
			}
		}},
		{url: "rediss+cluster://h1:7000", topo: Cluster, addrs: []string{"h1:7000"}, check: func(t *testing.T, u *RedisURL) {
			if u.Cluster.TLSConfig == nil {
				t.Error("rediss+cluster without TLS")
			}
		}},
		{url: "redis://h1:7000?addr=h2:7001", topo: Cluster, addrs: []string{"h1:7000", "h2:7001"}}, // go-redis's own form
		{url: "redis+sentinel://s1:26379?master_name=mymaster&addr=s2:26379&password=masterpw&db=2", topo: Sentinel, addrs: []string{"s1:26379", "s2:26379"}, check: func(t *testing.T, u *RedisURL) {
			if u.Failover.MasterName != "mymaster" || u.Failover.Password != "masterpw" || u.Failover.DB != 2 {
				t.Errorf("options %+v", u.Failover)
			}
		}},
		{url: "redis://s1:26379?master_name=m", topo: Sentinel, addrs: []string{"s1:26379"}}, // go-redis's own form
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			u, err := ParseRedisURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if u.Topology != tc.topo {
				t.Fatalf("topology %s, want %s", u.Topology, tc.topo)
			}
			var addrs []string
			switch tc.topo {
			case Single:
				addrs = []string{u.Single.Addr}
			case Cluster:
				addrs = u.Cluster.Addrs
			case Sentinel:
				addrs = u.Failover.SentinelAddrs
			}
			if !reflect.DeepEqual(addrs, tc.addrs) {
				t.Errorf("addresses %v, want %v", addrs, tc.addrs)
			}
			if tc.check != nil {
				tc.check(t, u)
			}
			c := u.NewClient()
			defer c.Close()
			want := map[Topology]string{Single: "*redis.Client", Sentinel: "*redis.Client", Cluster: "*redis.ClusterClient"}[tc.topo]
			if got := reflect.TypeOf(c).String(); got != want {
				t.Errorf("client %s, want %s", got, want)
			}
		})
	}
}

func TestParseRedisURLRejects(t *testing.T) {
	for _, raw := range []string{
		"",
		"http://h:1",
		"redis+ring://h:1",
		"redis+sentinel://s1:26379",              // no master_name
		"redis+sentinel://s1:26379?master_name=", // empty master_name
		"redis+cluster://h1:7000/2",              // a cluster has db 0 only
		"redis+cluster://h1:7000?addr=nonsense",  // addr without port
		"redis+cluster://h1:7000?pool_size=lots", // not a number
		"redis://h:1?no_such_option=1",           // unknown option
		"unix+cluster:///tmp/x.sock",             // no cluster over a socket
		"redis://user:s3cret@h:1/notanumber",     // password must not leak
		"redis+sentinel://:s3cret@s1:26379?db=x&master_name=m",
	} {
		_, err := ParseRedisURL(raw)
		if err == nil {
			t.Errorf("%q: accepted", raw)
			continue
		}
		var fe *fnmesh.Error
		if !errors.As(err, &fe) || fe.Code != fnmesh.CodeInvalidArgument {
			t.Errorf("%q: error %v (%T), want invalid_argument", raw, err, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: error repeats the password: %v", raw, err)
		}
		t.Logf("%q: %v", raw, err)
	}
}

// NewRedis refuses a bad URL with the same typed error, through Validate.
func TestNewRedisRejectsBadURL(t *testing.T) {
	_, err := NewRedis(RedisConfig{URL: "redis+sentinel://s1:26379"})
	if !errors.Is(err, fnmesh.ErrInvalidArgument) {
		t.Fatalf("NewRedis: %v, want invalid_argument", err)
	}
}

// The blocking reader gets a connection of its own for every topology it
// can copy options from, read raw (bounded); a cluster reader dials the
// key's master itself and takes the slot map from the bus's client.
func TestBlockingReaderPerTopology(t *testing.T) {
	for _, raw := range []string{"redis://127.0.0.1:1", "redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1?master_name=m"} {
		b, err := NewRedis(RedisConfig{URL: raw})
		if err != nil {
			t.Fatal(err)
		}
		br := b.newBlockingReader()
		if !br.own || !br.raw() {
			t.Errorf("%s: the blocking reader does not read on a connection of its own", raw)
		}
		if cluster := strings.HasPrefix(raw, "redis+cluster"); cluster != (br.cluster != nil) || cluster != (br.UniversalClient == b.rdb) {
			t.Errorf("%s: the blocking reader's client is the bus's: %v", raw, br.UniversalClient == b.rdb)
		}
		switch c := br.UniversalClient.(type) {
		case *redis.Client:
			if c.Options().PoolSize != 1 {
				t.Errorf("%s: reader pool %d", raw, c.Options().PoolSize)
			}
			// A Sentinel bus's reader is a failover client of its own.
			if sentinel := strings.HasPrefix(raw, "redis+sentinel"); sentinel != (c.Options().Addr == "FailoverClient") {
				t.Errorf("%s: reader dials %s", raw, c.Options().Addr)
			}
		}
		br.close()
		b.Close()
	}
}
