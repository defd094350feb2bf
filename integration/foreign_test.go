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

	"github.com/fnmesh/fnmesh/client"
	"github.com/fnmesh/fnmesh/meshtest"
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

// goAndForeignReplicasShareTheLoad runs a Go replica process and one of
// another language (start) for one service: a Go caller's calls spread
// over both.
func goAndForeignReplicasShareTheLoad(t *testing.T, lang string, start func(t testing.TB, service, replica string, args ...string) *foreignReplica) {
	t.Parallel()
	service := meshtest.Name("mix" + lang)
	foreign := lang + "-replica"
	// Each replica runs at most 4 calls of 10 ms at once; 16 callers keep
	// both saturated, so each answers about half, whichever reads faster.
	startWorker(t, workerSpec{Service: service, Replica: "go-replica", Concurrency: 4})
	start(t, service, foreign, "--concurrency", "4")
	c := newClient(t, client.Config{})
	const calls = 400
	per := spread(t, c, service+".sleep", SleepIn{Ms: 10}, 16, calls)
	t.Logf("calls per replica: %v", per)
	for _, r := range []string{"go-replica", foreign} {
		if per[r] < calls/4 {
			t.Errorf("replica %s answered %d of %d calls, want at least a quarter", r, per[r], calls)
		}
	}
	if len(per) != 2 {
		t.Errorf("answered by %v, want exactly the two replicas", per)
	}
}
