// Command shop is a small application written once and placed by
// configuration: checkout.buy asks pricing for a quote, reserves stock
// with inventory, and sends a receipt with mail. Which of the four
// services a process hosts comes from --local (or FNMESH_LOCAL, or
// --local-file); calls between services hosted in the same process run
// in-process, the others go through Redis (--inline, or FNMESH_INLINE,
// runs a hosted service's co-located calls on their caller's goroutine).
// The same binary runs
//
//	one process:         shop
//	one per service:     shop --local checkout & shop --local pricing & ...
//	mixed:               shop --local checkout,pricing & shop --local inventory,mail
//
// with the same results: see docs/PLACEMENT.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh"
	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/redisflags"
	"github.com/fnmesh/fnmesh/placement"
	"github.com/fnmesh/fnmesh/registry"
	"github.com/fnmesh/fnmesh/security"
)

// Order is what checkout.buy takes.
type Order struct {
	ID    string `json:"id" validate:"required"`
	SKU   string `json:"sku" validate:"required"`
	Qty   int    `json:"qty" validate:"gte=1,lte=100"`
	Email string `json:"email" validate:"required,email"`
}

// Receipt is what checkout.buy returns.
type Receipt struct {
	OrderID string `json:"order_id"`
	Cents   int    `json:"cents"`
	Left    int    `json:"left"` // stock left of the SKU after this order
}

// Quote is pricing.quote's argument and result.
type Quote struct {
	SKU   string `json:"sku" validate:"required"`
	Qty   int    `json:"qty" validate:"gte=1"`
	Cents int    `json:"cents"`
}

// Reservation is inventory.reserve's argument.
type Reservation struct {
	OrderID string `json:"order_id" validate:"required"`
	SKU     string `json:"sku" validate:"required"`
	Qty     int    `json:"qty" validate:"gte=1"`
}

// Mail is mail.receipt's argument.
type Mail struct {
	To      string `json:"to" validate:"required,email"`
	OrderID string `json:"order_id" validate:"required"`
	Cents   int    `json:"cents"`
}

var prices = map[string]int{"apple": 120, "pear": 95, "plum": 40}

// Services returns the shop's four services; c is the client checkout
// calls the others with (set before they run).
func Services(cfg handlers.Config, c **client.Client) []*handlers.Service {
	pricing := handlers.NewService("pricing", cfg)
	handlers.Register(pricing, "quote", func(_ context.Context, q Quote) (Quote, error) {
		p, ok := prices[q.SKU]
		if !ok {
			return Quote{}, fnmesh.NewError("unknown_sku", "no price for "+q.SKU)
		}
		q.Cents = p * q.Qty
		return q, nil
	})

	inventory := handlers.NewService("inventory", cfg)
	var mu sync.Mutex
	reserved := map[string]int{} // order id -> quantity, so a retried order reserves once
	stock := map[string]int{"apple": 1000000, "pear": 1000000, "plum": 0}
	handlers.Register(inventory, "reserve", func(_ context.Context, r Reservation) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if _, done := reserved[r.OrderID]; done {
			return stock[r.SKU], nil
		}
		if stock[r.SKU] < r.Qty {
			return 0, fnmesh.NewError("out_of_stock", r.SKU+" is out of stock")
		}
		stock[r.SKU] -= r.Qty
		reserved[r.OrderID] = r.Qty
		return stock[r.SKU], nil
	})

	mail := handlers.NewService("mail", cfg)
	var sentMu sync.Mutex
	sent := map[string]int{} // order id -> receipts sent
	handlers.Register(mail, "receipt", func(_ context.Context, m Mail) (struct{}, error) {
		sentMu.Lock()
		sent[m.OrderID]++
		sentMu.Unlock()
		return struct{}{}, nil
	})
	handlers.Register(mail, "sent", func(_ context.Context, orderID string) (int, error) {
		sentMu.Lock()
		defer sentMu.Unlock()
		return sent[orderID], nil
	})

	checkout := handlers.NewService("checkout", cfg)
	handlers.Register(checkout, "buy", func(ctx context.Context, o Order) (Receipt, error) {
		var q Quote
		if err := (*c).Call(ctx, "pricing.quote", Quote{SKU: o.SKU, Qty: o.Qty}, &q, client.ForwardToken(ctx)); err != nil {
			return Receipt{}, err
		}
		var left int
		if err := (*c).Call(ctx, "inventory.reserve", Reservation{OrderID: o.ID, SKU: o.SKU, Qty: o.Qty}, &left, client.ForwardToken(ctx)); err != nil {
			return Receipt{}, err
		}
		if err := (*c).Send(ctx, "mail.receipt", Mail{To: o.Email, OrderID: o.ID, Cents: q.Cents}, client.ForwardToken(ctx)); err != nil {
			return Receipt{}, err
		}
		return Receipt{OrderID: o.ID, Cents: q.Cents, Left: left}, nil
	})
	return []*handlers.Service{checkout, pricing, inventory, mail}
}

func main() {
	app := &cli.App{
		Name:  "shop",
		Usage: "the example shop: checkout, pricing, inventory and mail, placed by --local",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "local", EnvVars: []string{placement.EnvLocal}, Usage: "services this process hosts, e.g. checkout,pricing (default: all four)"},
			&cli.StringFlag{Name: "local-file", EnvVars: []string{placement.EnvLocalFile}, Usage: "file listing the services this process hosts"},
			&cli.StringFlag{Name: "inline", EnvVars: []string{placement.EnvInline}, Usage: "hosted services whose co-located calls run on their caller's goroutine, e.g. pricing"},
			&cli.BoolFlag{Name: "insecure", Usage: "run without a token check (else HS256 with $FNMESH_JWT_SECRET)"},
			&cli.IntFlag{Name: "concurrency", Value: 64, Usage: "requests each replica runs at once"},
		}, redisflags.Flags("Redis URL (default redis://127.0.0.1:6379)")...),
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := handlers.Config{Logger: log, Concurrency: c.Int("concurrency"),
		Plugins: []handlers.Plugin{registry.NewAnnouncer(registry.Config{Version: "shop"})}}
	if c.Bool("insecure") {
		cfg.AllowUnauthenticated = true
	} else {
		secret := os.Getenv("FNMESH_JWT_SECRET")
		if secret == "" {
			return cli.Exit("shop: set FNMESH_JWT_SECRET (32 bytes or more) to verify tokens, or run with --insecure", 2)
		}
		v, err := security.NewJWTVerifier(security.JWTConfig{HMACSecret: []byte(secret)})
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		cfg.Auth = v
	}
	local, err := placement.Resolve(c.String("local"), c.String("local-file"))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	var caller *client.Client
	p, err := placement.New(placement.Config{Local: local, Inline: placement.ResolveInline(c.String("inline"))}, Services(cfg, &caller)...)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	rc, err := redisflags.Config(c, "redis://127.0.0.1:6379")
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	b, err := bus.NewRedis(rc)
	if err != nil {
		return err
	}
	defer b.Close()
	caller, err = client.New(b, client.Config{Name: "shop", Local: p, Logger: log})
	if err != nil {
		return err
	}
	defer caller.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		if p.Started(ctx) == nil {
			log.Info("shop serving", "hosted", p.Hosted())
		}
	}()
	return p.Run(ctx, b)
}
