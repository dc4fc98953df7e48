package agent_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/agent/statedir"
	"devid/simulator/simtest"
)

// The kill -9 cases not covered by TestLifecycleKill9,
// TestKill9Provisioning and TestFactoryModeThenField: a power cut while
// connecting, while re-provisioning and in error. Each holds the agent
// in the state, queues messages through the local API, kills it, checks
// the queue on disk, restarts it and waits until every message arrived.

// cliStatus is `devid-agent status --json` for the board.
type cliStatus struct {
	State     string `json:"state"`
	Source    string `json:"source"`
	LastError string `json:"last_error"`
	Queue     struct {
		Depth   uint64 `json:"depth"`
		Dropped uint64 `json:"dropped"`
	} `json:"queue"`
}

func (b *board) cliStatus() cliStatus {
	b.t.Helper()
	out, err := exec.Command(agentBinary(b.t), "status", "--json", "--config", b.config).Output()
	if err != nil && exitCode(err) != 1 { // 1: not connected, or not running
		b.t.Fatalf("devid-agent status --json: %v", err)
	}
	var st cliStatus
	if err := json.Unmarshal(out, &st); err != nil {
		b.t.Fatalf("devid-agent status --json: %v\n%s", err, out)
	}
	return st
}

// exitCode is the exit status of a finished command's error (0 for nil,
// -1 when it did not run).
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// waitCLI waits until `devid-agent status --json` reports the running
// agent (not the state files of a dead one) in state want.
func (b *board) waitCLI(want string, within time.Duration) cliStatus {
	b.t.Helper()
	var st cliStatus
	b.waitFor("status --json state "+want, within, func() bool {
		st = b.cliStatus()
		return strings.HasPrefix(st.Source, "agent") && st.State == want
	})
	return st
}

// queueAndKill sends n messages tagged tag through the local API of the
// running agent, checks the live depth grew by n, power-cuts the agent
// and checks the on-disk queue still holds them.
func (b *board) queueAndKill(n int, tag string) {
	b.t.Helper()
	base := b.liveDepth()
	b.send(n, tag)
	if d := b.liveDepth(); d != base+float64(n) {
		b.t.Fatalf("queue depth %v, want %v", d, base+float64(n))
	}
	b.kill()
	if d := b.queueDepth(); float64(d) < base+float64(n) {
		b.t.Fatalf("queue depth after kill -9: %d, want at least %v", d, base+float64(n))
	}
}

// waitDrained waits until the live queue is empty and nothing was dropped.
func (b *board) waitDrained() {
	b.t.Helper()
	b.waitFor("queue drained", 30*time.Second, func() bool { return b.liveDepth() == 0 })
	if st := b.cliStatus(); st.Queue.Dropped != 0 {
		b.t.Fatalf("%d messages dropped", st.Queue.Dropped)
	}
}

// stallRelay stands between the agent and a hub. Stalled, it accepts
// TCP connections and never answers (a black-holed path: the TLS
// handshake hangs), which holds the agent in "connecting"; released, it
// closes the held connections and relays new ones to the hub.
type stallRelay struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	stalled bool
	held    []net.Conn
	accepts int
}

func newStallRelay(t *testing.T, target string) *stallRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &stallRelay{ln: ln, target: target, stalled: true}
	t.Cleanup(func() { ln.Close(); r.release() })
	go r.serve()
	return r
}

func (r *stallRelay) addr() string { return r.ln.Addr().String() }

func (r *stallRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.accepts++
		if r.stalled {
			r.held = append(r.held, c)
			r.mu.Unlock()
			continue
		}
		r.mu.Unlock()
		go r.pipe(c)
	}
}

func (r *stallRelay) pipe(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
}

// accepted is how many connections reached the relay so far.
func (r *stallRelay) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepts
}

func (r *stallRelay) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stalled = false
	for _, c := range r.held {
		c.Close()
	}
	r.held = nil
}

// TestKill9Connecting: the hub's network path black-holes, so the agent
// sits in connecting with its cached assignment; power cut; the restart
// connects to the cached hub again (DPS is refusing, so it cannot have
// gone there) and the queued messages arrive once the path is back.
func TestKill9Connecting(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "kill9conn-dev", "")
	as, err := (&statedir.Dir{Path: b.state}).LoadAssignment()
	if err != nil {
		t.Fatal(err)
	}
	hubAddr, ok := sim.Resolve()[as.Hub]
	if !ok {
		t.Fatalf("assigned hub %q is not one of the simulator's: %v", as.Hub, sim.Resolve())
	}
	b.kill()

	relay := newStallRelay(t, hubAddr)
	b.resolve = map[string]string{as.Hub: relay.addr()}
	b.writeConfig()
	sim.SetFault(t, simtest.Fault{Scope: "dps", Ops: []string{"register"}, Status: 500, Count: 1000})
	b.start()
	b.waitFor("a hub connect attempt held by the relay", 30*time.Second, func() bool { return relay.accepted() >= 1 })
	b.waitCLI("connecting", 30*time.Second)
	b.queueAndKill(10, "k")

	before := relay.accepted()
	b.start()
	b.waitFor("a hub connect attempt after the restart", 30*time.Second, func() bool { return relay.accepted() > before })
	b.waitCLI("connecting", 30*time.Second)
	relay.release()
	b.waitCLI("connected", 60*time.Second)
	b.waitDelivered("k", 10)
	b.waitDrained()
	if after, _ := (&statedir.Dir{Path: b.state}).LoadAssignment(); after == nil || !after.AssignedAt.Equal(as.AssignedAt) {
		t.Fatalf("the cached assignment changed: %+v, was %+v", after, as)
	}
}

// TestKill9Reprovisioning: the hub refuses the device (deleted), the
// agent re-provisions and DPS answers slowly; power cut mid-way. The
// refused assignment was set aside, so the restart goes to DPS (not to
// the hub that refused it) and then delivers what was queued.
func TestKill9Reprovisioning(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "kill9reprov-dev", "")
	as, err := (&statedir.Dir{Path: b.state}).LoadAssignment()
	if err != nil {
		t.Fatal(err)
	}
	sim.SetFault(t, simtest.Fault{Scope: "dps", Ops: []string{"register"}, DelayMs: 60000, Count: 1000})
	sim.MustDo("DELETE", "/sim/devices/"+as.Hub+"/"+b.deviceID, nil, nil)
	b.waitCLI("reprovisioning", 30*time.Second)
	b.queueAndKill(10, "r")
	if _, err := (&statedir.Dir{Path: b.state}).LoadAssignment(); err == nil {
		t.Fatal("the assignment of the hub that refused the device is still cached")
	}

	sim.ClearFaults(t)
	restarted := time.Now()
	b.start()
	b.waitCLI("connected", 60*time.Second)
	b.waitDelivered("r", 10)
	b.waitDrained()
	if lp := b.persisted().LastProvision; lp == nil || lp.Result != "assigned" || lp.At.Before(restarted.Add(-time.Second)) {
		t.Fatalf("the restart did not register with DPS again: %+v", lp)
	}
}

// TestKill9Error: a config update drops dps.id_scope, so the cached
// assignment (of the old scope) is unusable and nothing can work: the
// agent goes to error and says why, keeps queueing, survives a power
// cut in that state, and delivers everything once the config is fixed.
func TestKill9Error(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "kill9err-dev", "")
	b.kill()

	good, err := os.ReadFile(b.config)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(good), "id_scope = \""+sim.Ready.IDScope+"\"", `id_scope = ""`, 1)
	if bad == string(good) {
		t.Fatal("could not blank id_scope in the board config")
	}
	os.WriteFile(b.config, []byte(bad), 0o644)
	b.start()
	st := b.waitCLI("error", 30*time.Second)
	if !strings.Contains(st.LastError, "id_scope") {
		t.Fatalf("status last_error %q does not name id_scope", st.LastError)
	}
	b.queueAndKill(10, "e")

	b.start()
	if st := b.waitCLI("error", 30*time.Second); st.Queue.Depth < 10 {
		t.Fatalf("queue depth %d after the restart, want at least 10", st.Queue.Depth)
	}
	b.kill()
	os.WriteFile(b.config, good, 0o644) // the operator fixes the config
	b.start()
	b.waitCLI("connected", 60*time.Second)
	b.waitDelivered("e", 10)
	b.waitDrained()
}

// TestConfigLastKnownGood (docs/field-problems.md, row 18): a config that once started the
// agent is kept in the state dir; a bad config pushed later does not
// strand the device: run logs every problem and runs with the copy, and
// status and check say so. (A bad config with no history still exits
// non-zero: TestBadConfig.)
func TestConfigLastKnownGood(t *testing.T) {
	skipShort(t)
	t.Parallel()
	_, b := startConnectedBoard(t, "lkg-dev", "")
	lkg := filepath.Join(b.state, "config.last-good.toml")
	b.waitFor("the last-known-good config", 10*time.Second, func() bool {
		st, err := os.Stat(lkg)
		return err == nil && st.Mode().Perm() == 0o600
	})
	b.kill()

	good, _ := os.ReadFile(b.config)
	bad := strings.Replace(string(good), `fsync = "always"`, `fsync = "sometimes"`, 1)
	if bad == string(good) {
		t.Fatal("could not break queue.fsync in the board config")
	}
	os.WriteFile(b.config, []byte(bad), 0o644)
	saved, _ := os.ReadFile(lkg)
	b.start()
	st := b.waitCLI("connected", 60*time.Second)
	out, err := exec.Command(agentBinary(t), "status", "--json", "--config", b.config).Output()
	var m map[string]any
	if exitCode(err) != 1 || json.Unmarshal(out, &m) != nil { // 1: degraded config
		t.Fatalf("status --json: %v (want exit 1: degraded)\n%s", err, out)
	}
	if c, _ := m["config"].(string); !strings.Contains(c, "last-known-good") || !strings.Contains(c, "queue.fsync") {
		t.Fatalf("status config %q (state %s): want the degraded note naming queue.fsync", c, st.State)
	}
	if !strings.Contains(b.stderr.String(), "running with the last-known-good config") {
		t.Fatalf("run did not log the fallback\n%s", b.stderr.String())
	}
	out, _ = exec.Command(agentBinary(t), "check", "--json", "--offline", "--config", b.config).Output()
	var results []struct{ Name, Result, Detail string }
	json.Unmarshal(out, &results)
	found := false
	for _, r := range results {
		if r.Name == "config" {
			found = r.Result == "warn" && strings.Contains(r.Detail, "queue.fsync")
		}
	}
	if !found {
		t.Fatalf("check config line is not a warning naming queue.fsync: %s", out)
	}
	if now, _ := os.ReadFile(lkg); string(now) != string(saved) {
		t.Fatal("a degraded start overwrote the last-known-good config")
	}
	b.send(2, "g")
	b.waitDelivered("g", 2)
}
