// Package simproc starts the devid-sim binary as a child process, waits for
// and parses its one-line JSON ready message, and stops it again. It is the
// piece shared by simtest (Go tests), the simulator load bench and the QEMU
// board harness; it imports no testing code and no server code.
package simproc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"devid/simulator/simapi"
)

// Ready is devid-sim's ready line; Endpoint and Hub are its parts. They
// are the one definition in simapi, named here for simproc's users.
type (
	Ready    = simapi.Ready
	Endpoint = simapi.Endpoint
	Hub      = simapi.Hub
)

// Options tune Start. The zero value is usable.
type Options struct {
	// Stderr receives the simulator's log; nil discards it.
	Stderr io.Writer
	// Stdout receives every stdout line, the ready line included; nil
	// discards them.
	Stdout io.Writer
	// Timeout bounds the wait for the ready line; 0 means 60 s.
	Timeout time.Duration
	// SysProcAttr replaces the default (own process group), which Stop
	// relies on: it must keep Setpgid.
	SysProcAttr *syscall.SysProcAttr
}

// Proc is a running devid-sim.
type Proc struct {
	Cmd   *exec.Cmd
	Ready Ready
	done  chan struct{}
}

// Start runs binary with args (e.g. "serve", "--state", dir) and waits for
// the ready line: the first stdout line that starts with "{". It fails if
// the process exits first, the line does not parse, the timeout passes or
// ctx ends; in each case the process is stopped before Start returns.
func Start(ctx context.Context, binary string, args []string, o Options) (*Proc, error) {
	cmd := exec.Command(binary, args...)
	cmd.SysProcAttr = o.SysProcAttr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	cmd.Stderr = o.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		first := true
		for sc.Scan() {
			if first && strings.HasPrefix(strings.TrimSpace(sc.Text()), "{") {
				lines <- sc.Text()
				first = false
			}
			if o.Stdout != nil {
				fmt.Fprintln(o.Stdout, sc.Text())
			}
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() { _ = cmd.Wait(); close(p.done) }()
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case l, ok := <-lines:
		if !ok {
			<-p.done
			return nil, errors.New("devid-sim exited before its ready line")
		}
		if err := json.Unmarshal([]byte(l), &p.Ready); err != nil {
			p.Stop()
			return nil, fmt.Errorf("devid-sim ready line %q: %w", l, err)
		}
		return p, nil
	case <-timer.C:
		p.Stop()
		return nil, fmt.Errorf("devid-sim printed no ready line within %v", timeout)
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process group, waits up to 10 s, then sends
// SIGKILL, and returns once the process is reaped. It is safe to call more
// than once.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}
