// Package redisflags is the command-line side of bus.RedisConfig: the
// flags every fnmesh command and example binary takes to reach a
// protected Redis (ACL user, TLS).
package redisflags

import (
	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/bus"
)

// Default is the URL used when --redis and $REDIS_URL are not set.
const Default = "redis://127.0.0.1:6379"

// Flags returns --redis (usage as given) and the ACL and TLS flags.
func Flags(usage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "redis", EnvVars: []string{"REDIS_URL"}, Usage: usage},
		&cli.StringFlag{Name: "redis-user", EnvVars: []string{"REDIS_USER"}, Usage: "Redis ACL user (overrides the URL's)"},
		&cli.StringFlag{Name: "redis-password", EnvVars: []string{"REDIS_PASSWORD"}, Usage: "Redis password (overrides the URL's)"},
		&cli.StringFlag{Name: "redis-ca", EnvVars: []string{"REDIS_CA"}, Usage: "PEM file of the CA that signed the Redis server's certificate (turns TLS on)"},
		&cli.StringFlag{Name: "redis-cert", EnvVars: []string{"REDIS_CERT"}, Usage: "client certificate for Redis TLS (with --redis-key)"},
		&cli.StringFlag{Name: "redis-key", EnvVars: []string{"REDIS_KEY"}, Usage: "client key for Redis TLS"},
	}
}

// Config returns the bus configuration the flags describe; the URL
// defaults to fallback ("" means none: the caller picks the in-memory bus).
func Config(c *cli.Context, fallback string) (bus.RedisConfig, error) {
	cfg := bus.RedisConfig{URL: c.String("redis"), Username: c.String("redis-user"), Password: c.String("redis-password")}
	if cfg.URL == "" {
		cfg.URL = fallback
	}
	if c.String("redis-ca") != "" || c.String("redis-cert") != "" {
		t, err := bus.TLSFiles{CAFile: c.String("redis-ca"), CertFile: c.String("redis-cert"), KeyFile: c.String("redis-key")}.Config()
		if err != nil {
			return cfg, err
		}
		cfg.TLS = t
	}
	return cfg, nil
}
