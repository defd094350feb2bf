package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/security"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "print an HS256 token (for the examples and for testing)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "secret", EnvVars: []string{"FNMESH_JWT_SECRET"}, Usage: "HMAC secret, at least 32 bytes (required unless --demo)"},
			&cli.BoolFlag{Name: "demo", Usage: "sign with the public demo secret when --secret and FNMESH_JWT_SECRET are not set (for the demo only)"},
			&cli.StringFlag{Name: "sub", Value: "cli", Usage: "subject"},
			&cli.StringSliceFlag{Name: "role", Usage: "role to grant (repeat for more)"},
			&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "lifetime"},
		},
		Action: func(c *cli.Context) error {
			secret := []byte(c.String("secret"))
			if len(secret) == 0 {
				if !c.Bool("demo") {
					return cli.Exit(examples.ErrNoSecret.Error()+" (or --secret)", 2)
				}
				secret = []byte(examples.DemoSecret)
			}
			if len(secret) < 32 {
				return cli.Exit("the secret must have at least 32 bytes", 2)
			}
			extra := security.Claims{}
			if roles := c.StringSlice("role"); len(roles) > 0 {
				extra["roles"] = roles
			}
			tok, err := security.NewHS256Signer(secret).Sign(c.String("sub"), c.Duration("ttl"), extra)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, tok)
			return nil
		},
	}
}
