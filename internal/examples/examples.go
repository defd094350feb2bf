// Package examples holds the services that `fnmesh demo` and the
// binaries under cmd/examples run: math (synchronous functions behind a
// token check), mail (sent fire-and-forget) and legacy (a backend that is
// down, to show a breaker opening).
package examples

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/security"
)

// DemoSecret signs the demo's tokens. Anyone can read it here: it is
// used only when asked for (fnmesh demo, --demo), never by default.
const DemoSecret = "fnmesh-demo-secret-change-me-32bytes"

// SecretEnv is the environment variable that holds the HMAC secret of
// the example services' tokens.
const SecretEnv = "FNMESH_JWT_SECRET"

// ErrNoSecret says that no token secret is set and the demo's was not
// asked for.
var ErrNoSecret = errors.New(SecretEnv + " is not set: set it to a secret of at least 32 bytes " +
	"(e.g. export " + SecretEnv + "=$(openssl rand -hex 32)), or pass --demo to use the public demo secret")

// Secret returns $FNMESH_JWT_SECRET. When it is not set it returns
// DemoSecret if demo is true, and ErrNoSecret otherwise.
func Secret(demo bool) ([]byte, error) {
	if s := os.Getenv(SecretEnv); s != "" {
		return []byte(s), nil
	}
	if demo {
		return []byte(DemoSecret), nil
	}
	return nil, ErrNoSecret
}

// DemoVerifier checks HS256 tokens signed with DemoSecret: for the demo
// and tests.
func DemoVerifier() security.Verifier {
	v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: []byte(DemoSecret)})
	if err != nil {
		panic(err) // DemoSecret is long enough
	}
	return v
}

// AddIn are the arguments of math.add.
type AddIn struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

// DivIn are the arguments of math.div: the divisor must not be zero.
type DivIn struct {
	A float64 `json:"a"`
	B float64 `json:"b" validate:"ne=0"`
}

// Result is what math functions return: the value and who computed it.
type Result struct {
	Value   float64 `json:"value"`
	Replica string  `json:"replica"`
}

// SqrtIn are the arguments of math.sqrt.
type SqrtIn struct {
	X float64 `json:"x"`
}

// ErrNegative is math.sqrt's application error.
var ErrNegative = fnmesh.NewError("negative_input", "square root of a negative number")

// Math returns the math service: add, div (validated), sqrt (an
// application error), stats (admins only).
func Math(cfg handlers.Config) *handlers.Service {
	svc := handlers.NewService("math", cfg)
	var calls atomic.Int64
	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (Result, error) {
		calls.Add(1)
		return Result{Value: in.A + in.B, Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "div", func(ctx context.Context, in DivIn) (Result, error) {
		calls.Add(1)
		return Result{Value: in.A / in.B, Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "sqrt", func(ctx context.Context, in SqrtIn) (Result, error) {
		calls.Add(1)
		if in.X < 0 {
			return Result{}, ErrNegative
		}
		return Result{Value: math.Sqrt(in.X), Replica: handlers.Info(ctx).Replica}, nil
	})
	handlers.Register(svc, "stats", func(ctx context.Context, _ struct{}) (map[string]any, error) {
		c, _ := security.ClaimsFromContext(ctx)
		return map[string]any{"calls": calls.Load(), "replica": handlers.Info(ctx).Replica, "asked_by": c.Subject()}, nil
	}, handlers.RequireRole("admin"))
	return svc
}

// Mail are the arguments of mail.welcome.
type Mail struct {
	To   string `json:"to" validate:"required,email"`
	Name string `json:"name"`
}

// MailService returns the mail service; sent is called for every mail
// "sent" (the demo prints it).
func MailService(cfg handlers.Config, sent func(replica string, m Mail)) *handlers.Service {
	svc := handlers.NewService("mail", cfg)
	handlers.Register(svc, "welcome", func(ctx context.Context, m Mail) (struct{}, error) {
		time.Sleep(20 * time.Millisecond) // an SMTP round trip
		if sent != nil {
			sent(handlers.Info(ctx).Replica, m)
		}
		return struct{}{}, nil
	})
	return svc
}

// Legacy returns a service whose backend is down: every lookup fails with
// an internal error, so callers' breakers open.
func Legacy(cfg handlers.Config) *handlers.Service {
	svc := handlers.NewService("legacy", cfg)
	handlers.Register(svc, "lookup", func(ctx context.Context, in struct {
		ID string `json:"id"`
	}) (string, error) {
		return "", errors.New("backend unreachable: connection refused")
	})
	return svc
}

// Logger returns a text logger at level for the example binaries.
func Logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Describe returns a one-line description of err for the demo.
func Describe(err error) string {
	var fe *fnmesh.Error
	if errors.As(err, &fe) {
		return fmt.Sprintf("%s: %s", fe.Code, fe.Message)
	}
	return err.Error()
}
