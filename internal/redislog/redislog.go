// Package redislog routes go-redis's own log lines (a failed dial, a
// pool that cannot reconnect) through slog at debug level, so that the
// commands print their own error, not the library's, when Redis is down.
package redislog

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Route sends go-redis's log lines to l at debug level; a nil l means
// slog.Default(). It is process-wide, as go-redis's logger is.
func Route(l *slog.Logger) {
	redis.SetLogger(logger{l})
}

type logger struct{ l *slog.Logger }

func (g logger) Printf(ctx context.Context, format string, v ...any) {
	l := g.l
	if l == nil {
		l = slog.Default()
	}
	if !l.Enabled(ctx, slog.LevelDebug) {
		return
	}
	l.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "go-redis")
}
