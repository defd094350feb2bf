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
	if err := newApp().Run(flagsFirst(os.Args)); err != nil {
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
		},
	}
}

// redisFlag is the --redis flag every command that talks to Redis takes.
func redisFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: "redis", EnvVars: []string{"REDIS_URL"}, Usage: usage}
}

// flagsFirst moves the flags written after the positional arguments of
// call and send (`fnmesh call math.add '{}' --token T`) before them, where
// urfave/cli v2 looks for flags. Every flag of those commands takes a
// value.
func flagsFirst(args []string) []string {
	if len(args) < 3 || (args[1] != "call" && args[1] != "send") {
		return args
	}
	var flags, rest []string
	for i := 2; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rest = append(rest, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1 && !strings.HasPrefix(a, "-0") && !isNumber(a):
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		default:
			rest = append(rest, a)
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	return append(out, rest...)
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}
