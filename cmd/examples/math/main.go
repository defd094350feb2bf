// Command math runs one replica of the example math service on Redis.
// Start it in several terminals and watch `fnmesh call math.add` spread
// over them.
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/fnmesh/fnmesh/handlers"
	"github.com/fnmesh/fnmesh/internal/examples"
)

func main() {
	app := examples.ServiceApp("math", "one replica of the example math service", func(cfg handlers.Config, _ *slog.Logger) *handlers.Service {
		return examples.Math(cfg)
	})
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(examples.ExitCode(err))
	}
}
