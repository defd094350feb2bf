package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/fnmesh/fnmesh"
)

// version is the module's version from the build info: a tag for
// `go install ...@v0.3.0`, "(devel)" in a checkout, with the VCS
// revision when the build recorded one.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " " + rev + modified
	}
	return v + " " + info.GoVersion
}

// usageError makes every flag-parsing error exit 2, where urfave/cli
// would return it as a plain error.
func usageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(err.Error(), 2)
}

// report prints err (as JSON on stdout when the command ran with --json)
// and returns the exit status: 0, 1 for failed calls and commands, 2 for
// usage errors.
func report(app *cli.App, err error, stderr io.Writer) int {
	// urfave/cli reports an unknown command through App.CommandNotFound,
	// which returns nothing: it leaves the name in the metadata.
	if name, ok := app.Metadata[notFoundKey].(string); ok {
		fmt.Fprintf(stderr, "fnmesh: unknown command %q (fnmesh help lists them)\n", name)
		return 2
	}
	if err == nil {
		return 0
	}
	code := exitCode(err)
	var je *jsonError
	if errors.As(err, &je) {
		if printJSON(app.Writer, viewError(je.err, code)) == nil {
			return code
		}
	}
	v := viewError(err, code)
	msg := err.Error()
	if code != 2 && !strings.HasPrefix(msg, string(v.Code)+":") {
		msg = string(v.Code) + ": " + msg
	}
	fmt.Fprintln(stderr, "fnmesh:", msg)
	return code
}

const notFoundKey = "unknown command"

// exitCode maps an error to the process's exit status: 2 for usage
// errors, 1 for everything else (function and mesh errors print their
// code first).
func exitCode(err error) int {
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// errorView is an error as --json prints it.
type errorView struct {
	Code      fnmesh.Code             `json:"code"`
	Message   string                  `json:"message"`
	Fields    []fnmesh.FieldViolation `json:"fields"`
	RequestID string                  `json:"request_id,omitempty"`
}

func viewError(err error, exit int) errorView {
	v := errorView{Code: "unknown", Message: err.Error(), Fields: []fnmesh.FieldViolation{}}
	var fe *fnmesh.Error
	switch {
	case errors.As(err, &fe):
		v.Code, v.Message = fe.Code, fe.Message
		if fe.Fields != nil {
			v.Fields = fe.Fields
		}
	case exit == 2:
		v.Code = fnmesh.CodeInvalidArgument
	case errors.Is(err, context.DeadlineExceeded):
		v.Code = fnmesh.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		v.Code = fnmesh.CodeCanceled
	case isConnError(err):
		v.Code = fnmesh.CodeUnavailable
	}
	var re *requestError
	if errors.As(err, &re) {
		v.RequestID = re.id
	}
	return v
}

// isConnError tells a failure to reach Redis.
func isConnError(err error) bool {
	var ne net.Error
	var se syscall.Errno
	return errors.As(err, &ne) || errors.As(err, &se) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// jsonError marks an error of a command run with --json.
type jsonError struct{ err error }

func (e *jsonError) Error() string { return e.err.Error() }
func (e *jsonError) Unwrap() error { return e.err }

// jsonErrors wraps a command's action: with --json, its error is printed
// as JSON too.
func jsonErrors(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		err := action(c)
		if err != nil && c.Bool("json") {
			return &jsonError{err}
		}
		return err
	}
}

// requestError carries the id of the request that failed.
type requestError struct {
	err error
	id  string
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(fnmesh completion bash), or zsh",
		ArgsUsage: "bash|zsh",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				_, err := io.WriteString(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := io.WriteString(c.App.Writer, zshCompletion)
				return err
			}
			return cli.Exit("usage: fnmesh completion bash|zsh", 2)
		},
	}
}

// The scripts ask the binary for candidates (urfave/cli's
// --generate-bash-completion), as urfave/cli's own autocomplete files do.
const bashCompletion = `# fnmesh bash completion: source <(fnmesh completion bash)
_fnmesh_bash_complete() {
  local cur opts
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == "-"* ]]; then
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "${opts}" -- "${cur}"))
  return 0
}
complete -o bashdefault -o default -F _fnmesh_bash_complete fnmesh
`

const zshCompletion = `#compdef fnmesh
# fnmesh zsh completion: source <(fnmesh completion zsh)
_fnmesh_zsh_complete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _fnmesh_zsh_complete fnmesh
`
