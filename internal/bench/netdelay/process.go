package netdelay

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// childEnv, when set in a process's environment as "TARGET DELAY", makes
// ServeIfChild run a proxy instead of the program.
const childEnv = "FNMESH_NETDELAY_CHILD"

// StartProcess runs a proxy to target, at one-way delay d, in a process
// of its own (this program, run again), so that the CPU the proxy spends
// is not counted as the caller's. It returns the proxy's address, and
// stop, which ends the process. The program must call ServeIfChild first
// thing in main.
func StartProcess(target string, d time.Duration) (addr string, stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), childEnv+"="+target+" "+d.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		stdin.Close()
		cmd.Wait()
		return "", nil, fmt.Errorf("netdelay: proxy process: %w", err)
	}
	return strings.TrimSpace(line), func() { stdin.Close(); cmd.Wait() }, nil
}

// ServeIfChild, in a process StartProcess started, runs its proxy, prints
// its address, serves until standard input closes (the parent stopped or
// died), and exits. Elsewhere it returns at once.
func ServeIfChild() {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	target, delay, _ := strings.Cut(spec, " ")
	d, err := time.ParseDuration(delay)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netdelay:", err)
		os.Exit(2)
	}
	p, err := Start(target, d)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netdelay:", err)
		os.Exit(1)
	}
	fmt.Println(p.Addr())
	io.Copy(io.Discard, os.Stdin)
	p.Close()
	os.Exit(0)
}
