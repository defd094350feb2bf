package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// ptyDriver runs a command on a pseudo-terminal, waits for its first
// frame, presses q and reports how the command ended.
const ptyDriver = `
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
buf = b""
deadline = time.time() + 60
while b"FUNCTION" not in buf and time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 1)
    if r:
        try:
            buf += os.read(fd, 65536)
        except OSError:
            break
os.write(fd, b"q")
status = None
deadline = time.time() + 20
while time.time() < deadline:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = os.waitstatus_to_exitcode(st)
        break
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            buf += os.read(fd, 65536)
        except OSError:
            pass
if status is None:
    os.kill(pid, 9)
print("frame" if b"FUNCTION" in buf else "noframe", "clear" if b"\x1b[H\x1b[2J" in buf else "noclear", "exit=%s" % status)
`

// On a terminal, top redraws the screen and q quits it.
func TestCLITopQuitsOnQ(t *testing.T) {
	t.Parallel()
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Fatal("/usr/bin/python3 not found (make deps installs it)")
	}
	cmd := exec.Command(python, "-c", ptyDriver, fnmeshCLI(t), "top", "--interval", "200ms")
	cmd.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pty driver: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "frame clear exit=0" {
		t.Fatalf("top on a terminal: %q, want a frame, the screen cleared and exit 0 on q", got)
	}
}
