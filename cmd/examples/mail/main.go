// Command mail runs one replica of the example mail service on Redis; it
// logs every welcome mail it "sends". Try `fnmesh send mail.welcome`.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
)

func main() {
	app := examples.ServiceApp("mail", "one replica of the example mail service", func(cfg handlers.Config, log *slog.Logger) *handlers.Service {
		return examples.MailService(cfg, func(replica string, m examples.Mail) {
			log.Info("sent welcome mail", "to", m.To, "replica", replica)
		})
	})
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(examples.ExitCode(err))
	}
}
