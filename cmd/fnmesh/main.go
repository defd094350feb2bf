// Command fnmesh is the functions mesh's command line: run the demo, call
// and send to functions, benchmark, and mint tokens.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

func main() {
	app := newApp()
	if err := app.Run(flagsFirst(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "fnmesh:", err)
		os.Exit(exitCode(err))
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "fnmesh",
		Usage: "call functions across services over Redis Streams",
		// main prints errors and picks the exit status; keep urfave/cli
		// from exiting inside Run.
		ExitErrHandler: func(*cli.Context, error) {},
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
			statusCommand(),
		},
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
