// Package tpmtest runs a private swtpm for a test: one TPM 2.0 emulator
// per call, with its state in a temporary directory, killed at cleanup.
//
// It speaks swtpm's raw data channel (unix socket by default, TCP on
// request), which is what hal/tpm's "unix:" and "tcp:" addresses use.
// go-tpm's mssim transport does not work with swtpm.
package tpmtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
	"devid/hal/hosttest"
)

// SWTPM is a running swtpm.
type SWTPM struct {
	// Dir holds the TPM state (tpm2-00.permall) and the log.
	Dir string
	// Sock is the data socket (unix transport only).
	Sock string
	// Ctrl is the control socket (unix transport only; over TCP the
	// control port is Port+1).
	Ctrl string
	// Port is the data port (TCP transport only).
	Port int

	t      testing.TB
	tcp    bool
	cmd    *exec.Cmd
	exited <-chan error
	log    string
}

type config struct {
	manufacture bool
	maker       *Maker
	tcp         bool
	dir         string
}

// Option configures Start.
type Option func(*config)

// Manufactured runs swtpm_setup first, as a TPM vendor would: RSA and ECC
// EKs with certificates in NV (about a second of extra start-up).
func Manufactured() Option { return func(c *config) { c.manufacture = true } }

// ManufacturedBy is Manufactured with m as the TPM maker: the EK
// certificates are issued by m's root, so a test knows the root they
// chain to (m.Pool()). Several TPMs may share one maker.
func ManufacturedBy(m *Maker) Option {
	return func(c *config) { c.manufacture, c.maker = true, m }
}

// TCP serves the data channel on 127.0.0.1 instead of a unix socket.
func TCP() Option { return func(c *config) { c.tcp = true } }

// StateDir reuses an existing state directory, e.g. one a previous SWTPM
// used, to model a reboot of the same TPM.
func StateDir(dir string) Option { return func(c *config) { c.dir = dir } }

// Start starts swtpm and waits until it accepts connections. If swtpm is
// not installed the test is skipped, or fails when DEVID_REQUIRE asks for
// swtpm (see hal/hosttest).
func Start(t testing.TB, opts ...Option) *SWTPM {
	t.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	hosttest.LookPath(t, hosttest.SWTPM, "swtpm")
	dir := c.dir
	if dir == "" {
		dir = shortTempDir(t)
	}
	if c.manufacture {
		hosttest.LookPath(t, hosttest.SWTPM, "swtpm_setup")
		args := []string{"--tpm2", "--tpmstate", dir, "--create-ek-cert", "--overwrite"}
		if c.maker != nil {
			args = append(args, "--config", c.maker.setupConf)
		}
		out, err := exec.Command("swtpm_setup", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("swtpm_setup: %v\n%s", err, out)
		}
	}
	s := &SWTPM{Dir: dir, t: t, tcp: c.tcp, log: filepath.Join(dir, "swtpm.log")}
	if !c.tcp {
		// tpm2-tools' swtpm TCTI looks for the control socket at PATH.ctrl.
		s.Sock = filepath.Join(dir, "tpm.sock")
		s.Ctrl = s.Sock + ".ctrl"
	}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// shortTempDir returns a test temp dir whose socket paths fit in
// sun_path (108 bytes); long test names can push t.TempDir past it.
func shortTempDir(t testing.TB) string {
	dir := t.TempDir()
	if len(dir)+len("/tpm.sock.ctrl") < 100 {
		return dir
	}
	d, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (s *SWTPM) start() {
	s.t.Helper()
	for attempt := 0; ; attempt++ {
		server := "type=unixio,path=" + s.Sock
		ctrl := "type=unixio,path=" + s.Ctrl
		if s.tcp {
			// tpm2-tools' swtpm TCTI expects the control port at data port + 1.
			s.Port = freePortPair(s.t)
			server = "type=tcp,bindaddr=127.0.0.1,port=" + strconv.Itoa(s.Port)
			ctrl = "type=tcp,bindaddr=127.0.0.1,port=" + strconv.Itoa(s.Port+1)
		} else {
			os.Remove(s.Ctrl)
			os.Remove(s.Sock)
		}
		cmd := exec.Command("swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+s.Dir,
			"--server", server,
			"--ctrl", ctrl,
			"--flags", "not-need-init,startup-clear",
			"--log", "file="+s.log+",level=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			s.t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := waitReady(s.network(), s.address(), exited); err != nil {
			killGroup(cmd)
			<-exited
			logTail, _ := os.ReadFile(s.log)
			if s.tcp && attempt < 3 {
				continue // the port we picked was taken meanwhile
			}
			s.t.Fatalf("swtpm did not come up: %v\nstderr: %s\nlog: %s", err, stderr.String(), logTail)
		}
		s.cmd = cmd
		s.exited = exited
		return
	}
}

func (s *SWTPM) network() string {
	if s.tcp {
		return "tcp"
	}
	return "unix"
}

func (s *SWTPM) address() string {
	if s.tcp {
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	}
	return s.Sock
}

// waitReady waits, bounded, until the data channel accepts a connection.
// swtpm serves one connection at a time, so the probe closes at once.
func waitReady(network, addr string, exited <-chan error) error {
	var err, exit error
	ready := clocktest.Poll(10*time.Second, func() bool {
		select {
		case e := <-exited:
			exit = fmt.Errorf("swtpm exited: %v", e)
			return true
		default:
		}
		var c net.Conn
		if c, err = net.DialTimeout(network, addr, time.Second); err == nil {
			c.Close()
			return true
		}
		return false
	})
	switch {
	case exit != nil:
		return exit
	case !ready:
		return fmt.Errorf("no connection to %s after 10s: %w", addr, err)
	}
	return nil
}

// freePortPair finds P such that P and P+1 are free on 127.0.0.1 right
// now. Another process may take them before swtpm binds; start retries.
func freePortPair(t testing.TB) int {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no free pair of TCP ports on 127.0.0.1")
	return 0
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Addr is the hal/tpm address of this swtpm: "unix:PATH" or "tcp:127.0.0.1:PORT".
func (s *SWTPM) Addr() string {
	if s.tcp {
		return "tcp:" + s.address()
	}
	return "unix:" + s.Sock
}

// TCTI is the tpm2-tools --tcti string for this swtpm. swtpm serves one
// connection at a time: run tpm2-tools only while no command of ours is
// in flight (hal/tpm connects per command, so that is between calls).
func (s *SWTPM) TCTI() string {
	if s.tcp {
		return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", s.Port)
	}
	return "swtpm:path=" + s.Sock
}

// Stop terminates swtpm (SIGTERM, then SIGKILL) and waits for it. The
// state directory stays, so Restart brings the same TPM back. Stopping a
// stopped SWTPM does nothing.
func (s *SWTPM) Stop() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	s.cmd = nil
}

// Restart stops swtpm and starts it again on the same state: a power
// cycle. Transient objects are gone; NV, seeds and persistent objects stay.
func (s *SWTPM) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// ErrNotRunning is returned by Pid when swtpm is stopped.
var ErrNotRunning = errors.New("swtpm not running")

// Pid is swtpm's process ID.
func (s *SWTPM) Pid() (int, error) {
	if s.cmd == nil {
		return 0, ErrNotRunning
	}
	return s.cmd.Process.Pid, nil
}
