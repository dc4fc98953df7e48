package agent_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/simulator/simtest"
)

// connectProxy is a minimal HTTP CONNECT proxy on loopback. It resolves
// the simulator's host names itself (as a site proxy resolves for its
// clients) and records every CONNECT target.
type connectProxy struct {
	ln      net.Listener
	resolve map[string]string
	mu      sync.Mutex
	targets []string
}

func newConnectProxy(t *testing.T, resolve map[string]string) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln, resolve: resolve}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, req.Host)
	p.mu.Unlock()
	host, _, _ := net.SplitHostPort(req.Host)
	p.mu.Lock()
	addr, ok := p.resolve[host]
	p.mu.Unlock()
	if !ok {
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", addr)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	go func() { io.Copy(up, br); up.Close() }()
	io.Copy(c, up)
}

func (p *connectProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// TestCheckThroughProxy (docs/field-problems.md, row 8): with network.proxy set, the agent
// provisions and connects through the CONNECT proxy, and `check` tests
// DPS and hub reachability through it too (it used to skip them).
func TestCheckThroughProxy(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	proxy := newConnectProxy(t, sim.Resolve())
	b := newBoard(t, sim, "proxy-dev", "[network]\nproxy = \"http://"+proxy.ln.Addr().String()+"\"\n")
	b.start()
	b.waitState("connected", 30*time.Second)
	b.send(2, "p")
	b.waitDelivered("p", 2)

	before := len(proxy.seen())
	out, err := exec.Command(agentBinary(t), "check", "--json", "--config", b.config).Output()
	var results []struct{ Name, Result, Detail, Hint string }
	if jerr := json.Unmarshal(out, &results); jerr != nil {
		t.Fatalf("check output %q: %v (%v)", out, jerr, err)
	}
	got := map[string]string{}
	for _, r := range results {
		got[r.Name] = r.Result + ": " + r.Detail
	}
	for _, name := range []string{"dps reachable", "hub reachable"} {
		if !strings.HasPrefix(got[name], "pass") || !strings.Contains(got[name], "via proxy") {
			t.Errorf("check %q = %q, want a pass through the proxy", name, got[name])
		}
	}
	if n := len(proxy.seen()) - before; n < 2 {
		t.Errorf("check opened %d tunnels through the proxy, want 2 (DPS and hub): %v", n, proxy.seen())
	}

	// The proxy refuses the tunnel: check fails with the proxy hint.
	proxy.mu.Lock()
	proxy.resolve = map[string]string{}
	proxy.mu.Unlock()
	text, err := exec.Command(agentBinary(t), "check", "--offline=false", "--config", b.config).CombinedOutput()
	if err == nil || !strings.Contains(string(text), "[FAIL] dps-reachable") || !strings.Contains(string(text), "proxy") {
		t.Fatalf("check with the proxy refusing: %v\n%s", err, text)
	}
}
