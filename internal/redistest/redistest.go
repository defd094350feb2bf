// Package redistest finds or starts the Redis server that tests run
// against: $REDIS_URL if set; else a throwaway redis-server on a free
// loopback port (installing Debian's redis-server first when it is
// missing and we are root); else a throwaway redis:7 container when a
// Docker engine answers. Failing all three it says what to install.
package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process started for tests.
type Server struct {
	Addr string // host:port
	URL  string // redis://host:port (rediss:// with Options.TLS)
	Dir  string // working directory (AOF files live here)
	// TLSConfig trusts the server's test CA; nil without Options.TLS.
	TLSConfig *tls.Config
	args      []string
	cmd       *exec.Cmd
	mu        sync.Mutex
}

// Options for Start.
type Options struct {
	// AOF turns on the append-only file with fsync every second.
	AOF bool
	// Dir holds the server's files; default a new temporary directory.
	Dir string
	// Args are extra redis-server arguments, e.g. "--cluster-enabled", "yes".
	Args []string
	// Port to listen on; default a free one.
	Port int
	// ConfigFile, when set, is read first (redis-server CONFIG OPTIONS):
	// sentinels need a config file they can rewrite.
	ConfigFile string
	// Users are ACL users, one per string as in an ACL file without the
	// leading "user": "math on >secret ~fnmesh:{math}:* +xadd". The
	// default user is left as it is (no password), for the harness.
	Users []string
	// TLS, when set, makes the server speak TLS only, with these files
	// (see NewTLSFiles); URL is then rediss:// and TLSConfig trusts the CA.
	TLS *TLSFiles
}

// Binary returns the path of redis-server, installing it with apt-get
// when it is missing and the process runs as root.
func Binary() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("apt-get"); err == nil {
			cmd := exec.Command("sh", "-c", "apt-get install -y redis-server >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y redis-server >/dev/null 2>&1)")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			if err := cmd.Run(); err == nil {
				if p, err := exec.LookPath("redis-server"); err == nil {
					return p, nil
				}
			}
		}
	}
	return "", errors.New("redis-server not found")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs a redis-server on loopback and waits until it answers PING.
func Start(opts Options) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "fnmesh-redis-"); err != nil {
			return nil, err
		}
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	var args []string
	if opts.ConfigFile != "" {
		args = append(args, opts.ConfigFile)
	}
	plainPort := strconv.Itoa(port)
	if opts.TLS != nil {
		plainPort = "0" // TLS only
	}
	args = append(args, "--port", plainPort, "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log"))
	if opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	for _, u := range opts.Users {
		args = append(args, "--user")
		args = append(args, strings.Fields(u)...)
	}
	scheme := "redis://"
	if opts.TLS != nil {
		args = append(args, "--tls-port", strconv.Itoa(port), "--tls-cert-file", opts.TLS.CertFile,
			"--tls-key-file", opts.TLS.KeyFile, "--tls-ca-cert-file", opts.TLS.CAFile, "--tls-auth-clients", "no")
		scheme = "rediss://"
	}
	args = append(args, opts.Args...)
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir, args: append([]string{bin}, args...)}
	s.URL = scheme + s.Addr
	if opts.TLS != nil {
		t, err := opts.TLS.ClientConfig()
		if err != nil {
			return nil, err
		}
		s.TLSConfig = t
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.args[0], s.args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the tests
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	go cmd.Wait()
	return waitPingTLS(s.URL, s.TLSConfig, 10*time.Second, s.Dir)
}

func waitPing(url string, d time.Duration, dir string) error {
	return waitPingTLS(url, nil, d, dir)
}

func waitPingTLS(url string, tc *tls.Config, d time.Duration, dir string) error {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	if tc != nil {
		opt.TLSConfig = tc
	}
	opt.MaxRetries = -1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return fmt.Errorf("redis at %s did not answer in %v: %v\n%s", url, d, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		waitGone(s.Addr)
		s.cmd = nil
	}
}

// Stop shuts the server down, letting it write its AOF.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		waitGone(s.Addr)
		s.cmd = nil
	}
}

// Pause stops the server's process (SIGSTOP): connections stay open and
// nothing answers, as with a server that hangs; Resume continues it.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return errors.New("redistest: server not running")
	}
	return s.cmd.Process.Signal(sig)
}

// Restart starts the server again on the same port and directory.
func (s *Server) Restart() error { return s.start() }

func waitGone(addr string) {
	for i := 0; i < 500; i++ {
		c, err := net.DialTimeout("tcp", addr, 50*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// Close stops the server and removes its directory.
func (s *Server) Close() {
	s.Kill()
	if strings.Contains(s.Dir, "fnmesh-redis-") {
		os.RemoveAll(s.Dir)
	}
}

var (
	sharedOnce sync.Once
	sharedURL  string
	sharedErr  error
	sharedStop func()
)

// URL returns the Redis URL that tests share in this process: $REDIS_URL,
// or a server started on first use. Call Cleanup from TestMain when done.
func URL() (string, error) {
	sharedOnce.Do(func() {
		if u := os.Getenv("REDIS_URL"); u != "" {
			sharedURL = u
			sharedErr = waitPing(u, 5*time.Second, os.TempDir())
			return
		}
		if s, err := Start(Options{}); err == nil {
			sharedURL, sharedStop = s.URL, s.Close
			return
		} else if u, stop, derr := startContainer(); derr == nil {
			sharedURL, sharedStop = u, stop
			return
		} else {
			sharedErr = fmt.Errorf("no Redis for the tests: REDIS_URL is not set; redis-server: %v; docker: %v.\n"+
				"Install one: `apt-get install redis-server` (Debian/Ubuntu), `brew install redis` (macOS), "+
				"or set REDIS_URL=redis://host:port", err, derr)
		}
	})
	return sharedURL, sharedErr
}

// Cleanup stops the shared server and the shared cluster, if this
// process started them.
func Cleanup() {
	if sharedStop != nil {
		sharedStop()
	}
	if shared != nil {
		shared.Close()
	}
}

// startContainer runs redis:7 in Docker on a free port, for laptops with
// a Docker engine and no redis-server.
func startContainer() (string, func(), error) {
	if _, err := exec.LookPath("docker"); err != nil {
		return "", nil, err
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		return "", nil, errors.New("no Docker engine answers")
	}
	port, err := FreePort()
	if err != nil {
		return "", nil, err
	}
	out, err := exec.Command("docker", "run", "-d", "--rm", "-p", fmt.Sprintf("127.0.0.1:%d:6379", port), "redis:7").Output()
	if err != nil {
		return "", nil, fmt.Errorf("docker run redis:7: %w", err)
	}
	id := strings.TrimSpace(string(out))
	stop := func() { exec.Command("docker", "rm", "-f", id).Run() }
	url := fmt.Sprintf("redis://127.0.0.1:%d", port)
	if err := waitPing(url, 30*time.Second, os.TempDir()); err != nil {
		stop()
		return "", nil, err
	}
	return url, stop, nil
}
