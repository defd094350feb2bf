package integration

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// foreignReplica is a replica process written in another language (the
// Node and Python interop tools): it prints "ready ID" once it has joined
// its group, and drains on SIGTERM.
type foreignReplica struct {
	lang  string
	id    string
	cmd   *exec.Cmd
	lines chan string
	exit  chan error
}

// startForeignReplica runs argv (its program serving as replica) and waits
// up to ready for its "ready" line; at the test's end it stops it,
// allowing drain for the hand-back.
func startForeignReplica(t testing.TB, lang, replica string, argv []string, ready, drain time.Duration) *foreignReplica {
	t.Helper()
	return startForeignReplicaEnv(t, lang, replica, argv, []string{"REDIS_URL=" + redisURL}, ready, drain)
}

// startForeignReplicaEnv is startForeignReplica with env added to the
// process's environment (REDIS_URL among them).
func startForeignReplicaEnv(t testing.TB, lang, replica string, argv, env []string, ready, drain time.Duration) *foreignReplica {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &foreignReplica{lang: lang, id: replica, cmd: cmd, lines: make(chan string, 16), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case r.lines <- sc.Text():
			default:
			}
		}
		r.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if err := r.stop(drain); err != nil {
			t.Errorf("%s replica %s: %v", lang, replica, err)
		}
	})
	select {
	case l := <-r.lines:
		if l != "ready "+replica {
			t.Fatalf("%s replica %s said %q, want ready", lang, replica, l)
		}
	case err := <-r.exit:
		r.exit <- err
		t.Fatalf("%s replica %s exited: %v", lang, replica, err)
	case <-time.After(ready):
		t.Fatalf("%s replica %s not ready in %v", lang, replica, ready)
	}
	return r
}

// stop sends SIGTERM and waits for a clean exit (the replica drains).
func (r *foreignReplica) stop(d time.Duration) error {
	select {
	case err := <-r.exit:
		r.exit <- err
		return nil // already gone (killed by the test)
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.exit:
		r.exit <- err
		return err
	case <-time.After(d):
		r.cmd.Process.Kill()
		return fmt.Errorf("still running %v after SIGTERM", d)
	}
}

// kill9 kills the process at once (SIGKILL): nothing is handed back.
func (r *foreignReplica) kill9(t testing.TB) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-r.exit
	r.exit <- err
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("%s replica %s: %v, want killed by SIGKILL", r.lang, r.id, err)
	}
}
