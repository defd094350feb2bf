// Command withredis runs a command with REDIS_URL set: to $REDIS_URL if
// already set, else to a throwaway redis-server it starts (see
// internal/redistest) and stops afterwards.
//
//	go run ./internal/redistest/withredis -- go run ./cmd/fnmesh bench --compare
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/fnmesh/fnmesh/internal/redistest"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: withredis -- COMMAND [ARGS...]")
		os.Exit(2)
	}
	url, err := redistest.URL()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "REDIS_URL="+url)
	err = cmd.Run()
	redistest.Cleanup()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
