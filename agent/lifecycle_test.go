package agent_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/agent/queue"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/hal/clock/clocktest"
	"devid/hal/hosttest"
	"devid/simulator/simtest"
)

// goBinary is a Go command built once per test process, on first use.
type goBinary struct {
	name string // output file name
	pkg  string // package path, relative to this package's directory
	once sync.Once
	path string
	err  error
}

func (b *goBinary) build(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", b.name+"-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, b.name)
		if out, err := exec.Command("go", "build", "-o", b.path, b.pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", b.name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

var (
	agentBin = &goBinary{name: "devid-agent", pkg: "./cmd/devid-agent"}
	jigBin   = &goBinary{name: "devid-jig", pkg: "../enroll/cmd/devid-jig"}
)

// agentBinary builds the real devid-agent once per test process.
func agentBinary(t *testing.T) string { return agentBin.build(t) }

// jigBinary builds the real devid-jig once per test process.
func jigBinary(t *testing.T) string { return jigBin.build(t) }

// board is one simulated device: a state dir with a factory-issued
// identity and a config pointing at the simulator.
type board struct {
	t        *testing.T
	sim      *simtest.Sim
	dir      string
	state    string
	config   string
	socket   string
	clock    string
	deviceID string
	group    string
	root     string
	port     string
	extra    string
	// resolve overrides the simulator's dial address for a host (e.g.
	// a stalling relay in front of the hub).
	resolve map[string]string
	cmd     *exec.Cmd
	stderr  *lockedBuffer
	exited  chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newBoard(t *testing.T, sim *simtest.Sim, deviceID string, extra string) *board {
	t.Helper()
	dir, err := os.MkdirTemp("", "devid-board-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &board{t: t, sim: sim, dir: dir, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "api.sock"),
		clock: filepath.Join(dir, "clock"), deviceID: deviceID, group: "grp-" + deviceID}
	if err := os.Mkdir(b.state, 0o700); err != nil {
		t.Fatal(err)
	}
	// The factory step: a key made on the device and a certificate from
	// the device CA (the jig's path is covered by the demo and enroll's
	// tests; here only the result matters).
	ca := simtest.NewDeviceCA(t)
	dev := ca.Issue(t, deviceID)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(b.state, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("device.key", dev.KeyPEM(t))
	write("device-chain.pem", dev.ChainPEM())
	root := filepath.Join(dir, "factory-root.pem")
	os.WriteFile(root, simtest.PEM(ca.Root), 0o644)
	var issue []simtest.EnrollmentOption
	if strings.Contains(extra, `path = "dps"`) || strings.Contains(extra, `path = "hub"`) {
		// A board set up to renew through DPS needs an enrollment that
		// issues certificates (a credential policy on Azure).
		issue = append(issue, simtest.IssueCertificates())
	}
	sim.EnrollGroup(t, b.group, ca.Root, issue...)

	b.root = root
	b.extra = extra
	b.writeConfig()
	return b
}

// writeConfig writes the board's config.toml for the simulator.
func (b *board) writeConfig() {
	var resolve strings.Builder
	for host, addr := range b.sim.Resolve() {
		if o, ok := b.resolve[host]; ok {
			addr = o
		}
		fmt.Fprintf(&resolve, "%q = %q\n", host, addr)
	}
	cfg := fmt.Sprintf(`state_dir = %q
device_id = %q
log_level = "debug"
[key]
backend = "file:%s/device.key"
[factory]
root = %q
port = %q
[dps]
endpoint = "%s:8883"
id_scope = %q
trust_bundle = %q
timeout = "20s"
[hub]
connect_timeout = "10s"
[retry]
min_delay = "100ms"
max_delay = "1s"
jitter = "100ms"
revoked_min = "1s"
revoked_max = "2s"
[clock]
max_wait = "1h"
[local_api]
socket = %q
group = ""
[queue]
fsync = "always"
[health]
interval = "0s"
[debug]
allow_clock_override = true
[network.resolve]
%s
%s`, b.state, b.deviceID, b.state, b.root, b.port, b.sim.Ready.DPS.Host, b.sim.Ready.IDScope, b.sim.Ready.ServerCA, b.socket, resolve.String(), b.extra)
	b.config = filepath.Join(b.dir, "config.toml")
	os.WriteFile(b.config, []byte(cfg), 0o644)
}

// startConnectedBoard starts a simulator and a programmed board running
// the agent, and waits until the board is connected.
func startConnectedBoard(t *testing.T, deviceID, extra string) (*simtest.Sim, *board) {
	t.Helper()
	sim := simtest.Start(t)
	b := newBoard(t, sim, deviceID, extra)
	b.start()
	b.waitState("connected", 30*time.Second)
	return sim, b
}

// start boots the agent (see startEnv).
func (b *board) start() {
	b.t.Helper()
	b.startEnv()
}

// kill sends SIGKILL (power cut) to the agent.
func (b *board) kill() {
	if b.cmd == nil {
		return
	}
	syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	<-b.exited
	b.cmd = nil
}

// persisted reads the state record the agent wrote.
func (b *board) persisted() *statedir.State {
	st, err := (&statedir.Dir{Path: b.state}).LoadState()
	if err != nil {
		return &statedir.State{}
	}
	return st
}

// waitFor polls cond while the agent process runs (clocktest.Poll, the one
// wall-clock wait: the agent is a real process) and fails with its log.
func (b *board) waitFor(what string, within time.Duration, cond func() bool) {
	b.t.Helper()
	if !clocktest.Poll(within, cond) {
		b.t.Fatalf("timed out waiting for %s\n--- agent log ---\n%s", what, b.stderr.String())
	}
}

// waitState waits until the agent's state record says want.
func (b *board) waitState(want string, within time.Duration) {
	b.t.Helper()
	if !clocktest.Poll(within, func() bool { return b.persisted().Name == want }) {
		b.t.Fatalf("agent never reached %q (last %q)\n--- agent log ---\n%s", want, b.persisted().Name, b.stderr.String())
	}
}

// api sends one local-API request and returns the reply.
func (b *board) api(req string) map[string]any {
	b.t.Helper()
	var c net.Conn
	var err error
	// The agent creates its socket once it runs.
	clocktest.Poll(10*time.Second, func() bool {
		c, err = net.Dial("unix", b.socket)
		return err == nil
	})
	if err != nil {
		b.t.Fatalf("local api: %v\n%s", err, b.stderr.String())
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(req + "\n"))
	sc := bufio.NewScanner(c)
	if !sc.Scan() {
		b.t.Fatalf("no reply to %s", req)
	}
	var m map[string]any
	json.Unmarshal(sc.Bytes(), &m)
	if m["ok"] != true {
		b.t.Fatalf("%s: %v", req, m)
	}
	return m
}

func (b *board) send(n int, tag string) {
	for i := 0; i < n; i++ {
		b.api(fmt.Sprintf(`{"op":"send","body":{"tag":%q,"i":%d},"properties":{"tag":%q}}`, tag, i, tag))
	}
}

// appTelemetry returns the recorded application messages (not health) by tag.
func (b *board) appTelemetry() map[string]int {
	out := map[string]int{}
	for _, m := range b.sim.Telemetry(b.t, b.deviceID) {
		if tag := m.ApplicationProperties["tag"]; tag != "" {
			var body struct{ I int }
			json.Unmarshal([]byte(m.Body), &body)
			out[fmt.Sprintf("%s/%d", tag, body.I)]++
		}
	}
	return out
}

func (b *board) waitDelivered(tag string, n int) {
	b.t.Helper()
	delivered := clocktest.Poll(30*time.Second, func() bool {
		got := b.appTelemetry()
		for i := 0; i < n; i++ {
			if got[fmt.Sprintf("%s/%d", tag, i)] == 0 {
				return false
			}
		}
		return true
	})
	if delivered {
		return
	}
	b.t.Fatalf("messages %s/0..%d not all delivered: %v\n%s", tag, n-1, b.appTelemetry(), b.stderr.String())
}

// liveDepth asks the running agent for its queue depth.
func (b *board) liveDepth() float64 {
	st := b.api(`{"op":"status"}`)["status"].(map[string]any)
	return st["queue"].(map[string]any)["depth"].(float64)
}

func (b *board) queueDepth() uint64 {
	st, _ := queue.Inspect(filepath.Join(b.state, "queue"))
	return st.Depth
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs the real binaries")
	}
}

// TestLifecycleKill9 provisions, sends, and power-cuts the agent in
// connected, backoff (hub down, messages queued), clock wait and
// revoked; every restart resumes and nothing queued is lost.
func TestLifecycleKill9(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "kill9-dev", "")
	b.send(10, "a")
	b.waitDelivered("a", 10)
	as, err := (&statedir.Dir{Path: b.state}).LoadAssignment()
	if err != nil || as.DeviceID != b.deviceID {
		t.Fatalf("assignment not cached: %v %+v", err, as)
	}

	// 1. kill -9 while connected: restart uses the cache (no DPS).
	b.kill()
	sim.SetFault(t, simtest.Fault{Scope: "dps", Ops: []string{"register"}, Status: 500, Count: 1000})
	b.start()
	b.waitState("connected", 30*time.Second)
	sim.ClearFaults(t)

	// 2. Hub down: messages queue on disk; kill -9 in backoff; restart;
	//    the queue is intact; hub back: everything arrives.
	sim.Stop()
	b.waitState("backoff", 30*time.Second)
	// Messages of step 1 may still wait for a resend (at least once).
	base := b.liveDepth()
	b.send(15, "b")
	if d := b.liveDepth(); d != base+15 {
		t.Fatalf("queue depth %v, want %v", d, base+15)
	}
	b.kill()
	// On disk the ack cursor may lag by up to queue.fsync_interval, so a
	// power cut can only add duplicates, never lose the 15.
	if d := b.queueDepth(); float64(d) < base+15 {
		t.Fatalf("queue depth after kill -9: %d, want at least %v", d, base+15)
	}
	b.start()
	b.waitState("backoff", 30*time.Second)
	sim.Restart()
	b.waitState("connected", 60*time.Second)
	b.waitDelivered("b", 15)
	b.waitFor("queue depth 0 after delivery", 10*time.Second, func() bool { return b.liveDepth() == 0 })

	// 3. Boot with the clock at 1970: the agent waits, deletes nothing.
	b.kill()
	before, _ := os.ReadDir(b.state)
	os.WriteFile(b.clock, []byte("1970-01-01T00:00:00Z"), 0o644)
	b.start()
	b.waitState("enrolled", 20*time.Second)
	st := b.api(`{"op":"status"}`)["status"].(map[string]any)
	if st["clock_wait"] == nil {
		t.Fatalf("status does not report the clock wait: %v", st)
	}
	b.kill() // and a power cut during the wait
	b.start()
	b.waitState("enrolled", 20*time.Second)
	after, _ := os.ReadDir(b.state)
	have := map[string]bool{}
	for _, e := range after {
		have[e.Name()] = true
	}
	for _, e := range before {
		if !have[e.Name()] {
			t.Errorf("%s was deleted during the 1970 boot", e.Name())
		}
	}
	os.Remove(b.clock) // NTP arrives
	b.waitState("connected", 60*time.Second)

	// 4. Revoked: enrollment disabled and the device removed from its hub.
	sim.MustDo("POST", "/sim/enrollmentGroups/"+b.group+"/disable", nil, nil)
	sim.MustDo("DELETE", "/sim/devices/"+as.Hub+"/"+b.deviceID, nil, nil)
	b.waitState("revoked", 60*time.Second)
	b.kill()
	b.start()
	b.waitState("revoked", 60*time.Second)
	sim.MustDo("POST", "/sim/enrollmentGroups/"+b.group+"/enable", nil, nil)
	b.waitState("connected", 60*time.Second)
	b.send(3, "c")
	b.waitDelivered("c", 3)
}

// TestHubCrashMidTelemetry: the agent owns reconnect and resend (the dps
// client does neither). A kick by the hub, and a SIGKILL of the
// simulator while messages wait for slow PUBACKs, are both followed by a
// reconnect of the agent's own, and every message arrives at least once.
func TestHubCrashMidTelemetry(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "crash-dev", "")
	connects := func() int { return strings.Count(b.stderr.String(), "state=connected") }

	// 1. The hub kicks the device.
	before := connects()
	sim.MustDo("POST", "/sim/disconnect", map[string]string{"id": b.deviceID}, nil)
	b.waitFor("a reconnect after the kick", 30*time.Second, func() bool { return connects() > before })
	b.send(3, "k")
	b.waitDelivered("k", 3)

	// 2. The simulator dies with messages in flight: PUBACKs are slowed
	//    (the simulator records a message only after the delay), so some
	//    are surely unrecorded when it dies.
	const n = 40
	sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: b.deviceID, Ops: []string{"telemetry"}, DelayMs: 500})
	b.send(n, "m")
	b.waitFor("messages in flight", 30*time.Second, func() bool {
		got := len(b.appTelemetry())
		return got > 3 && got < 3+n
	})
	before = connects()
	if err := syscall.Kill(sim.Ready.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sim.Restart()
	sim.ClearFaults(t) // whether or not the fault survived the crash
	b.waitFor("a reconnect after the crash", 60*time.Second, func() bool { return connects() > before })
	b.waitDelivered("m", n)
	b.waitFor("queue depth 0 after delivery", 10*time.Second, func() bool { return b.liveDepth() == 0 })
}

// TestHubAuthRefusalReprovisionsEndToEnd deletes the device from its hub: the
// hub refuses (CONNACK 5) and the agent goes back to DPS, which creates
// it again.
func TestHubAuthRefusalReprovisionsEndToEnd(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "authref-dev", "")
	as, _ := (&statedir.Dir{Path: b.state}).LoadAssignment()
	sim.MustDo("DELETE", "/sim/devices/"+as.Hub+"/"+b.deviceID, nil, nil)
	b.waitFor("re-provisioning after the hub refused", 30*time.Second, func() bool {
		return strings.Contains(b.stderr.String(), "state=reprovisioning")
	})
	b.waitState("connected", 30*time.Second)
	b.send(2, "r")
	b.waitDelivered("r", 2)
}

// TestBadConfig: a clear message naming the field, and a non-zero exit.
func TestBadConfig(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.toml")
	os.WriteFile(p, []byte("state_dir = \"relative/path\"\n[hub]\nkeepalive = \"2h\"\nbogus_key = 1\n"), 0o644)
	for _, args := range [][]string{{"run", "--config", p}, {"config", "check", "--config", p}} {
		cmd := exec.Command(agentBinary(t), args...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() == 0 {
			t.Fatalf("%v: exit %v, want non-zero\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "hub.bogus_key") {
			t.Errorf("%v: message does not name the unknown key:\n%s", args, out)
		}
	}
	os.WriteFile(p, []byte("state_dir = \"relative/path\"\n[hub]\nkeepalive = \"2h\"\n"), 0o644)
	out, err := exec.Command(agentBinary(t), "config", "check", "--config", p).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "state_dir: \"relative/path\" is not an absolute path") || !strings.Contains(string(out), "hub.keepalive") {
		t.Fatalf("want both problems named, got %v:\n%s", err, out)
	}
}

// TestSystemdNotify runs the real binary under a fake service manager:
// READY=1, STATUS= lines, and WATCHDOG=1 while the state loop answers.
func TestSystemdNotify(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir, err := os.MkdirTemp("", "devid-notify-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir = %q\n[local_api]\nsocket = %q\ngroup = \"\"\n", filepath.Join(dir, "state"), filepath.Join(dir, "api.sock"))), 0o644)
	cmd := exec.Command(agentBinary(t), "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	seen := map[string]bool{}
	ln.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4096)
	for !(seen["READY=1"] && seen["WATCHDOG=1"] && seen["STATUS"]) {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("notifications so far %v: %v\n%s", seen, err, stderr.String())
		}
		msg := string(buf[:n])
		if strings.HasPrefix(msg, "STATUS=") {
			seen["STATUS"] = true
		}
		seen[msg] = true
	}
	// SIGTERM: a clean stop says STOPPING=1 and exits 0.
	cmd.Process.Signal(syscall.SIGTERM)
	for !seen["STOPPING=1"] {
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1: %v", err)
		}
		seen[string(buf[:n])] = true
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
	}
}

// TestFactoryModeThenField: an unprogrammed board with factory.port set
// serves the factory bus from the daemon; devid-jig programs it over a pty
// pair; the same process then provisions and connects, no restart.
func TestFactoryModeThenField(t *testing.T) {
	skipShort(t)
	t.Parallel()
	hosttest.LookPath(t, hosttest.Socat, "socat")
	sim := simtest.Start(t)
	b := newBoard(t, sim, "factory-dev", "")
	os.Remove(filepath.Join(b.state, "device.key"))
	os.Remove(filepath.Join(b.state, "device-chain.pem"))

	jig := jigBinary(t)
	caDir := filepath.Join(b.dir, "ca")
	if out, err := exec.Command(jig, "ca", "init", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(caDir, "root.pem"))
	roots, err := certstore.ParsePEM(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	sim.EnrollGroup(t, "factory-line", roots[0])

	boardTTY, jigTTY := filepath.Join(b.dir, "board-uart"), filepath.Join(b.dir, "jig-uart")
	socat := exec.Command("socat", "pty,raw,echo=0,link="+boardTTY, "pty,raw,echo=0,link="+jigTTY)
	if err := socat.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { socat.Process.Kill(); socat.Wait() })
	if !clocktest.Poll(10*time.Second, func() bool {
		_, e1 := os.Stat(boardTTY)
		_, e2 := os.Stat(jigTTY)
		return e1 == nil && e2 == nil
	}) {
		t.Fatal("socat pty pair did not appear")
	}
	b.root = filepath.Join(caDir, "root.pem")
	b.port = boardTTY
	b.writeConfig()
	b.start()
	b.waitState("factory", 20*time.Second)
	// Power cut in factory mode: it comes back to factory mode.
	b.kill()
	b.start()
	b.waitState("factory", 20*time.Second)
	if out, err := exec.Command(jig, "program", "--port", jigTTY, "--ca-dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("devid-jig program: %v\n%s\n--- agent ---\n%s", err, out, b.stderr.String())
	}
	b.waitState("connected", 60*time.Second)
	b.send(2, "f")
	b.waitDelivered("f", 2)
}

// TestStatusAndCheck runs `status --json` (live and from the state files)
// and `check --json` against a provisioned board.
func TestStatusAndCheck(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "check-dev", "")
	status := func(code int) map[string]any {
		out, err := exec.Command(agentBinary(t), "status", "--json", "--config", b.config).Output()
		if exitCode(err) != code {
			t.Fatalf("status: %v, want exit %d", err, code)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("status output %q: %v", out, err)
		}
		return m
	}
	live := status(0) // running and connected
	if live["agent"] != "running" || live["state"] != "connected" || live["device_id"] != b.deviceID || live["hub"] == "" || live["cert_expiry"] == nil ||
		!strings.HasPrefix(live["source"].(string), "agent") {
		t.Fatalf("live status %v", live)
	}

	out, err := exec.Command(agentBinary(t), "check", "--json", "--config", b.config).Output()
	var results []struct{ Name, Result, Detail, Hint string }
	if jerr := json.Unmarshal(out, &results); jerr != nil {
		t.Fatalf("check output %q: %v (%v)", out, jerr, err)
	}
	got := map[string]string{}
	for _, r := range results {
		got[r.Name] = r.Result
		if r.Result != "pass" && r.Hint == "" && r.Result != "skip" {
			t.Errorf("check %s is %s without a hint", r.Name, r.Result)
		}
	}
	for _, name := range []string{"config", "state dir", "key", "key matches cert", "chain", "cert expiry", "trust roots", "dps assignment", "dps reachable", "hub reachable"} {
		if got[name] != "pass" {
			t.Errorf("check %q = %q, want pass (all: %v)", name, got[name], got)
		}
	}
	if err != nil {
		t.Errorf("check exited %v with every check passing or warning: %v", err, got)
	}

	b.kill()
	off := status(1) // not running: the saved state
	if off["agent"] != "not running" || off["state"] != "connected" || off["device_id"] != b.deviceID || !strings.HasPrefix(off["source"].(string), "state files") {
		t.Fatalf("offline status %v", off)
	}
	// With the simulator gone, reachability fails with a hint and exit 1.
	sim.Stop()
	cmd := exec.Command(agentBinary(t), "check", "--config", b.config)
	text, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(text), "[FAIL] dps-reachable") || !strings.Contains(string(text), "hint:") {
		t.Fatalf("check with DPS down: %v\n%s", err, text)
	}
}

// TestKill9Provisioning: a power cut while DPS is answering slowly; the
// restart registers again and connects.
func TestKill9Provisioning(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	b := newBoard(t, sim, "kill9prov-dev", "")
	sim.SetFault(t, simtest.Fault{Scope: "dps", Ops: []string{"register"}, DelayMs: 60000, Count: 1000})
	b.start()
	b.waitState("provisioning", 20*time.Second)
	b.kill()
	if _, err := (&statedir.Dir{Path: b.state}).LoadAssignment(); err == nil {
		t.Fatal("an assignment was cached before DPS answered")
	}
	b.start()
	b.waitState("provisioning", 20*time.Second)
	sim.ClearFaults(t)
	b.waitState("connected", 60*time.Second)
	b.send(2, "p")
	b.waitDelivered("p", 2)
}

// TestLocalAPIEndToEnd: a local app subscribed over the socket gets C2D
// messages, desired-property patches and direct-method calls from the
// simulated hub, answers the method, and reports properties.
func TestLocalAPIEndToEnd(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "lapi-dev", "")

	c, err := net.Dial("unix", b.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sc := bufio.NewScanner(c)
	read := func() map[string]any {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("local api closed: %v\n%s", sc.Err(), b.stderr.String())
		}
		var m map[string]any
		json.Unmarshal(sc.Bytes(), &m)
		return m
	}
	c.Write([]byte(`{"op":"subscribe","c2d":true,"desired":true,"methods":["reboot"]}` + "\n"))
	if r := read(); r["ok"] != true {
		t.Fatalf("subscribe: %v", r)
	}
	// Events may arrive in any order relative to each other (and the full
	// desired document follows every connect); keep the last of each kind
	// and wait for one that matches.
	events := map[string]map[string]any{}
	nextMatch := func(kind string, ok func(map[string]any) bool) map[string]any {
		t.Helper()
		for events[kind] == nil || !ok(events[kind]) {
			m := read()
			if e, isEvent := m["event"].(string); isEvent {
				events[e] = m
			}
		}
		return events[kind]
	}
	next := func(kind string) map[string]any {
		return nextMatch(kind, func(map[string]any) bool { return true })
	}

	sim.SendC2D(t, "", b.deviceID, "hello board", map[string]string{"k": "v"})
	if ev := next("c2d"); ev["body"] != "hello board" || ev["properties"].(map[string]any)["k"] != "v" {
		t.Fatalf("c2d event %v", ev)
	}

	sim.MustDo("PATCH", "/twins/"+b.deviceID, map[string]any{"properties": map[string]any{"desired": map[string]any{"interval": 30}}}, nil)
	nextMatch("desired", func(ev map[string]any) bool {
		p, _ := ev["patch"].(map[string]any)
		return p["interval"] == 30.0
	})

	type methodResult struct {
		Status  int            `json:"status"`
		Payload map[string]any `json:"payload"`
	}
	res := make(chan methodResult, 1)
	go func() {
		var out methodResult
		sim.Do("POST", "/twins/"+b.deviceID+"/methods", map[string]any{"methodName": "reboot", "payload": map[string]any{"delay": 1}, "responseTimeoutInSeconds": 20}, &out)
		res <- out
	}()
	ev := next("method")
	if ev["name"] != "reboot" {
		t.Fatalf("method event %v", ev)
	}
	c.Write([]byte(`{"op":"method_response","call":"` + ev["call"].(string) + `","status":202,"payload":{"rebooting":true}}` + "\n"))
	for {
		if m := read(); m["ok"] != nil {
			if m["ok"] != true {
				t.Fatalf("method_response: %v", m)
			}
			break
		}
	}
	if r := <-res; r.Status != 202 || r.Payload["rebooting"] != true {
		t.Fatalf("method result at the service: %+v", r)
	}

	c.Write([]byte(`{"op":"report","patch":{"firmware":"1.2.3"}}` + "\n"))
	for {
		if m := read(); m["ok"] != nil {
			if m["ok"] != true {
				t.Fatalf("report: %v", m)
			}
			break
		}
	}
	var twin struct {
		Properties struct {
			Reported map[string]any `json:"reported"`
		} `json:"properties"`
	}
	sim.MustDo("GET", "/twins/"+b.deviceID, nil, &twin)
	if twin.Properties.Reported["firmware"] != "1.2.3" || twin.Properties.Reported["devid"] == nil {
		t.Fatalf("reported properties %v (want firmware and the agent's devid health)", twin.Properties.Reported)
	}
}

// TestMain removes the binaries built for the integration tests.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, bin := range []*goBinary{agentBin, jigBin} {
		if bin.path != "" {
			os.RemoveAll(filepath.Dir(bin.path))
		}
	}
	os.Exit(code)
}
