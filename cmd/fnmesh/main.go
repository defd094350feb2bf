// Command fnmesh is the functions mesh's command line: run the demo, call
// and send to functions, look at the mesh and its dead letters, serve the
// HTTP gateway, benchmark, and mint tokens.
//
// Exit status: 0 on success; 1 when a call or a command failed (the
// error's code is printed first: "fnmesh: invalid_argument: ...", or as
// JSON with --json); 2 for usage errors (unknown command or flag, wrong
// arguments, a bad configuration).
package main

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh/internal/examples"
	"github.com/fnmesh/fnmesh/internal/redislog"
)

func main() {
	app := newApp()
	err := app.Run(flagsFirst(app, os.Args))
	os.Exit(report(app, err, os.Stderr))
}

const exitHelp = `EXIT STATUS:
   0  success
   1  the call or command failed; the error's code comes first
      ("fnmesh: invalid_argument: ..."), or with --json as
      {"code", "message", "fields", "request_id"} on stdout
   2  usage error: unknown command or flag, wrong arguments, bad configuration`

func newApp() *cli.App {
	// go-redis's own log lines (a failed dial) go to slog at debug level,
	// shown with --debug; fnmesh prints its own error.
	redislog.Route(nil)
	app := &cli.App{
		Name:    "fnmesh",
		Usage:   "call functions across services over Redis Streams",
		Version: version(),
		// Shell completion: `source <(fnmesh completion bash)`.
		EnableBashCompletion:  true,
		Suggest:               true,
		CustomAppHelpTemplate: cli.AppHelpTemplate + "\n" + exitHelp + "\n",
		// main prints errors and picks the exit status; keep urfave/cli
		// from exiting inside Run.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   usageError,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "debug", EnvVars: []string{"FNMESH_DEBUG"}, Usage: "log debug lines to stderr, go-redis's own included"},
		},
		Before: func(c *cli.Context) error {
			if c.Bool("debug") {
				redislog.Route(examples.Logger(slog.LevelDebug))
			}
			return nil
		},
		Metadata: map[string]any{},
		CommandNotFound: func(c *cli.Context, name string) {
			c.App.Metadata[notFoundKey] = name
		},
		Commands: []*cli.Command{
			demoCommand(),
			callCommand(),
			sendCommand(),
			benchCommand(),
			tokenCommand(),
			dlqCommand(),
			gatewayCommand(),
			lsCommand(),
			describeCommand(),
			topCommand(),
			completionCommand(),
			statusCommand(),
		},
	}
	forEachCommand(app.Commands, func(c *cli.Command) {
		c.OnUsageError = usageError
		if c.Action != nil {
			c.Action = jsonErrors(c.Action)
		}
	})
	return app
}

func forEachCommand(cmds []*cli.Command, f func(*cli.Command)) {
	for _, c := range cmds {
		f(c)
		forEachCommand(c.Subcommands, f)
	}
}

// redisFlag is the --redis flag of the commands that take a URL only
// (bench, demo: user, password and TLS go in the URL).
func redisFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: "redis", EnvVars: []string{"REDIS_URL"}, Usage: usage}
}

// flagsFirst moves the flags written after a command's positional
// arguments (`fnmesh call math.add '{}' --token T`) before them, where
// urfave/cli v2 looks for flags. It walks the command tree to find the
// command and which of its flags take no value (booleans).
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds := app.Commands
	var cmd *cli.Command
	i := 1
	for ; i < len(args); i++ {
		next := findCommand(cmds, args[i])
		if next == nil {
			break
		}
		cmd, cmds = next, next.Subcommands
		out = append(out, args[i])
	}
	if cmd == nil {
		return args
	}
	boolean := map[string]bool{}
	for _, f := range cmd.Flags {
		if _, ok := f.(*cli.BoolFlag); ok {
			for _, n := range f.Names() {
				boolean[n] = true
			}
		}
	}
	var flags, rest []string
	for ; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rest = append(rest, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1 && !isNumber(a):
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(a, "=") && !boolean[name] && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		default:
			rest = append(rest, a)
		}
	}
	return append(append(out, flags...), rest...)
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}
