package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"time"

	"devid/agent"
	"devid/agent/config"
)

// Whether the agent runs is decided by its local API: status and check
// ask it for its status. A socket that is absent or refuses the
// connection means the agent is not running (it removes the socket when
// it stops; after a kill the file stays and the kernel refuses).

// liveness is what asking the agent found.
type liveness int

const (
	agentRunning      liveness = iota // it answered
	agentNotRunning                   // no socket, or connection refused
	agentNotAnswering                 // connected, but no (valid) reply
	agentDenied                       // permission denied on the socket
	agentUnknown                      // local API disabled: cannot ask
)

// probe is the answer of askAgent.
type probe struct {
	live   liveness
	status *agent.Status
	err    error // why, unless live is agentRunning
	socket string
}

// dialFunc opens the local API socket; tests inject one to produce
// errors a root test run cannot (permission denied).
type dialFunc func(ctx context.Context, path string) (net.Conn, error)

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	return d.DialContext(ctx, "unix", path)
}

// askAgent asks the running agent for its status over the local API.
func askAgent(ctx context.Context, cfg *config.Config, dial dialFunc) probe {
	p := probe{socket: cfg.LocalAPI.Socket}
	if p.socket == "" {
		p.live, p.err = agentUnknown, errors.New("the local API is disabled (local_api.socket is empty), so nothing can ask the agent")
		return p
	}
	if dial == nil {
		dial = dialUnix
	}
	c, err := dial(ctx, p.socket)
	switch {
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EPERM):
		p.live = agentDenied
		p.err = fmt.Errorf("%s: permission denied: %s", p.socket, socketHint(cfg))
		return p
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		p.live, p.err = agentNotRunning, fmt.Errorf("nothing answers on %s: %w", p.socket, err)
		return p
	case err != nil:
		p.live, p.err = agentNotAnswering, fmt.Errorf("%s: %w", p.socket, err)
		return p
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		p.live, p.err = agentNotAnswering, fmt.Errorf("%s: %w", p.socket, err)
		return p
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		p.live, p.err = agentNotAnswering, fmt.Errorf("no reply from %s (%v)", p.socket, sc.Err())
		return p
	}
	var rep struct {
		OK     bool
		Error  string
		Status *agent.Status
	}
	if err := json.Unmarshal(sc.Bytes(), &rep); err != nil || !rep.OK || rep.Status == nil {
		p.live, p.err = agentNotAnswering, fmt.Errorf("bad status reply from %s: %v %s", p.socket, err, rep.Error)
		return p
	}
	p.live, p.status = agentRunning, rep.Status
	return p
}

// socketHint says who may use the local API socket (mode 0660).
func socketHint(cfg *config.Config) string {
	if g := cfg.LocalAPI.Group; g != "" {
		return "run as root or as a member of group " + g + " (local_api.group)"
	}
	return "run as root or as the agent's user " + config.AgentUser + " (local_api.group is empty)"
}

// stateDenied is the hint for a state file the caller may not read: the
// state dir is 0700, so only root and the agent's user can.
func stateDenied(path string) string {
	return fmt.Sprintf("%s: permission denied: run as root (the state dir is readable only by root and the agent's user %s)", path, config.AgentUser)
}
