package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"devid/agent"
	"devid/agent/localapi"
	"devid/agent/renewal"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/enroll/keys"
	"devid/simulator/simtest"
)

// These tests run `status` and `check` as the CLI does (runStatus,
// runCheck, and exitStatus for the exit code) against a state dir and a
// local API socket in a temp dir: a real localapi server stands for the
// running agent.

// testBoard is a config, its state dir and its socket path.
type testBoard struct {
	dir, config, state, socket string
}

// newTestBoard writes a config whose state dir holds a saved state name
// (empty: none) and whose socket nothing listens on yet.
func newTestBoard(t *testing.T, savedState string, extra string) *testBoard {
	t.Helper()
	dir := t.TempDir()
	b := &testBoard{dir: dir, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "api.sock")}
	d, err := statedir.Open(b.state)
	if err != nil {
		t.Fatal(err)
	}
	if savedState != "" {
		if err := d.SaveState(&statedir.State{Name: savedState, Since: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}); err != nil {
			t.Fatal(err)
		}
	}
	b.config = writeFile(t, dir, "config.toml", `state_dir = "`+b.state+`"
[dps]
id_scope = "0ne00000001"
endpoint = "127.0.0.1:1"
[local_api]
socket = "`+b.socket+`"
group = ""
`+extra)
	return b
}

// fakeAgent is the Backend of a real localapi server: what a running
// agent would answer.
type fakeAgent struct{ st agent.Status }

func (f *fakeAgent) Enqueue(agent.Message) (uint64, error) { return 0, nil }
func (f *fakeAgent) Status() agent.Status                  { return f.st }
func (f *fakeAgent) Report(context.Context, []byte) error  { return nil }
func (f *fakeAgent) RequestReprovision()                   {}
func (f *fakeAgent) MethodAdded(string)                    {}

func (b *testBoard) serve(t *testing.T, st agent.Status) context.CancelFunc {
	t.Helper()
	srv, err := localapi.Listen(localapi.Options{Path: b.socket}, &fakeAgent{st: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

// status runs `status` and returns stdout, stderr and the exit code.
func (b *testBoard) status(t *testing.T, asJSON bool, dial dialFunc) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runStatus(context.Background(), &out, statusOpts{cfgPath: b.config, asJSON: asJSON, dial: dial})
	code := exitStatus(err, &errOut, "status")
	return out.String(), errOut.String(), code
}

// row is the value of the status row key ("" when there is none).
func row(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// check runs `check` with args (flags) the way dispatch does.
func (b *testBoard) check(t *testing.T, dial dialFunc, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	o := bindCheck(fs)
	if err := fs.Parse(append([]string{"--config", b.config}, args...)); err != nil {
		t.Fatal(err)
	}
	o.dial = dial
	err := runCheck(context.Background(), &out, *o)
	code := exitStatus(err, &errOut, "check")
	return out.String(), errOut.String(), code
}

// TestStatusAgentNotRunning: with nothing on the socket (absent, or a
// stale socket file after a kill) status says the agent is not running,
// shows the saved state as saved (never a live-looking "state:
// connected") and exits 1.
func TestStatusAgentNotRunning(t *testing.T) {
	for _, stale := range []bool{false, true} {
		b := newTestBoard(t, "connected", "")
		if stale {
			ln, err := net.Listen("unix", b.socket)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close() // the file stays: connection refused
		}
		out, errOut, code := b.status(t, false, nil)
		if code != 1 {
			t.Errorf("stale=%v: exit %d, want 1\n%s%s", stale, code, out, errOut)
		}
		if !strings.HasPrefix(row(out, "agent"), "not running (nothing answers on "+b.socket) ||
			!strings.HasPrefix(row(out, "last saved state"), "connected (since 2026-12-01T08:00:00Z), saved ") {
			t.Errorf("stale=%v: output does not say the agent is not running and the state is the saved one:\n%s", stale, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "state:") {
				t.Errorf("stale=%v: live-looking state line %q", stale, l)
			}
		}
		js, _, code := b.status(t, true, nil)
		var m map[string]any
		if err := json.Unmarshal([]byte(js), &m); err != nil || m["agent"] != "not running" || m["saved_at"] == nil || code != 1 {
			t.Errorf("stale=%v: --json exit %d, %v: %s", stale, code, err, js)
		}
	}
}

// TestStatusNeverRun: before the agent ever ran (no state dir yet) status
// says so and exits 1, like any agent that is not running. Before, it
// said the status "cannot be determined" and exited 2.
func TestStatusNeverRun(t *testing.T) {
	b := newTestBoard(t, "", "")
	os.RemoveAll(b.state)
	out, errOut, code := b.status(t, false, nil)
	if code != 1 || !strings.HasPrefix(row(out, "last saved state"), "never run (no state dir "+b.state+" yet); not live") {
		t.Errorf("exit %d, want 1 and 'never run'\n%s%s", code, out, errOut)
	}
}

// TestStatusRunning: the running agent answers; connected exits 0, any
// other state exits 1.
func TestStatusRunning(t *testing.T) {
	b := newTestBoard(t, "connected", "")
	stop := b.serve(t, agent.Status{State: "connected", Since: time.Now(), DeviceID: "dev-1", Hub: "hub.example", Uptime: "1m0s", Version: "test"})
	out, errOut, code := b.status(t, false, nil)
	if code != 0 || row(out, "agent") != "running" || !strings.HasPrefix(row(out, "state"), "connected") {
		t.Errorf("exit %d, want 0:\n%s%s", code, out, errOut)
	}
	stop()
	b2 := newTestBoard(t, "backoff", "")
	b2.serve(t, agent.Status{State: "backoff", Since: time.Now(), Uptime: "1m0s"})
	if out, errOut, code := b2.status(t, false, nil); code != 1 || !strings.Contains(out, "backoff") {
		t.Errorf("backoff: exit %d, want 1:\n%s%s", code, out, errOut)
	}
}

// deniedDial is the kernel's answer to a user who may not write to the
// socket (mode 0660, group local_api.group); tests run as root, which
// the kernel never denies, so it is injected.
func deniedDial(_ context.Context, path string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"},
		Err: os.NewSyscallError("connect", syscall.EACCES)}
}

// TestStatusPermissionDenied: a user who may not use the socket gets
// exit 2 and the path and the group to join, not a state.
func TestStatusPermissionDenied(t *testing.T) {
	if asNobody(t) {
		return
	}
	b := newTestBoard(t, "connected", "")
	b.config = writeFile(t, b.dir, "config.toml", strings.Replace(mustRead(t, b.config), `group = ""`, `group = "devid"`, 1))
	out, errOut, code := b.status(t, false, deniedDial)
	if code != 2 || out != "" || !strings.Contains(errOut, b.socket+": permission denied: run as root or as a member of group devid (local_api.group)") {
		t.Errorf("exit %d, want 2\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	os.Chmod(b.state, 0)
	t.Cleanup(func() { os.Chmod(b.state, 0o700) })
	// Nothing on the socket: not running is known (exit 1), and the saved
	// state is said to be unreadable, not guessed.
	out, errOut, code = b.status(t, false, nil)
	if code != 1 || !strings.Contains(out, "agent: not running") || !strings.Contains(out, "unreadable here") || !strings.Contains(out, "permission denied: run as root") {
		t.Errorf("state dir denied, agent not running: exit %d, want 1\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// results parses `check --json`.
func results(t *testing.T, js string) map[string]checkResult {
	t.Helper()
	var rs []checkResult
	if err := json.Unmarshal([]byte(js), &rs); err != nil {
		t.Fatalf("check --json: %v\n%s", err, js)
	}
	m := map[string]checkResult{}
	for _, r := range rs {
		m[r.ID] = r
	}
	return m
}

// TestCheckAgentRunning: check FAILs agent-running (exit 1) when nothing
// answers on the socket, passes it when the agent answers, and names the
// group on a permission error.
func TestCheckAgentRunning(t *testing.T) {
	b := newTestBoard(t, "connected", "")
	out, _, code := b.check(t, nil, "--only", "agent-running")
	if code != 1 || !strings.Contains(out, "[FAIL] agent-running") || !strings.Contains(out, "systemctl start devid-agent") {
		t.Errorf("stopped: exit %d, want 1:\n%s", code, out)
	}
	out, _, code = b.check(t, deniedDial, "--only", "agent-running")
	if code != 1 || !strings.Contains(out, "run as root or as the agent's user devid") || strings.Contains(out, "jig") {
		t.Errorf("denied: exit %d:\n%s", code, out)
	}
	b.serve(t, agent.Status{State: "connected", Uptime: "1m0s"})
	out, _, code = b.check(t, nil, "--only", "agent-running")
	if code != 0 || !strings.Contains(out, "[PASS] agent-running") {
		t.Errorf("running: exit %d, want 0:\n%s", code, out)
	}
}

// TestCheckSkipOnly: --only runs just the named checks, --skip leaves
// them out, an unknown ID is a usage error (exit 2).
func TestCheckSkipOnly(t *testing.T) {
	b := newTestBoard(t, "connected", "")
	js, _, _ := b.check(t, nil, "--json", "--only", "clock,set-aside")
	if got := results(t, js); len(got) != 2 || got["clock"].ID == "" || got["set-aside"].ID == "" {
		t.Errorf("--only clock,set-aside ran %v", got)
	}
	js, _, _ = b.check(t, nil, "--json", "--skip", "agent-running,dps-reachable,hub-reachable")
	got := results(t, js)
	if _, ok := got["agent-running"]; ok || len(got) < 8 {
		t.Errorf("--skip agent-running: %v", got)
	}
	for _, args := range [][]string{{"--skip", "clocks"}, {"--only", "clock,nosuch"}} {
		_, errOut, code := b.check(t, nil, args...)
		if code != 2 || !strings.Contains(errOut, "unknown check") {
			t.Errorf("%q: exit %d, want 2: %s", args, code, errOut)
		}
	}
}

// TestSetAsideReported: damaged files set aside in the state dir and
// its queue dir are listed by status (with their count) and named by a
// check WARN.
func TestSetAsideReported(t *testing.T) {
	b := newTestBoard(t, "connected", "")
	os.MkdirAll(filepath.Join(b.state, statedir.QueueDir), 0o700)
	a1 := writeFile(t, b.state, statedir.AssignmentFile+statedir.CorruptSuffix+"20261201T080000.000000000Z", "{")
	a2 := writeFile(t, filepath.Join(b.state, statedir.QueueDir), "cursor.json.corrupt-20261201T080000.000000000Z", "{")
	out, _, _ := b.status(t, false, nil)
	if line := row(out, "set aside"); !strings.HasPrefix(line, "2 damaged file(s) set aside: ") ||
		!strings.Contains(line, a1) || !strings.Contains(line, a2) {
		t.Errorf("status does not list the set-aside files:\n%s", out)
	}
	out, _, code := b.check(t, nil, "--only", "set-aside")
	if code != 0 || !strings.Contains(out, "[WARN] set-aside") || !strings.Contains(out, a1) || !strings.Contains(out, a2) ||
		!strings.Contains(out, "remove them") {
		t.Errorf("check set-aside: exit %d:\n%s", code, out)
	}
}

// TestCheckBeforeFactory: with no device key or certificate the DPS
// probe goes as far as it can without one (TCP, the server certificate)
// and says so, rather than failing a client-certificate handshake as a
// network problem; a server certificate from another root still fails.
func TestCheckBeforeFactory(t *testing.T) {
	b := newHubBoard(t, "factory", "auto")
	for _, f := range []string{keys.DefaultKeyFile, certstore.ChainFile, statedir.AssignmentFile} {
		os.Remove(filepath.Join(b.state, f))
	}
	cfg, _ := os.ReadFile(b.config)
	os.WriteFile(b.config, []byte(strings.Replace(string(cfg), `endpoint = "127.0.0.1:1"`, `endpoint = "example.com:8883"`, 1)), 0o600)
	out, _, _ := b.check(t, nil, "--only", "dps-reachable,hub-reachable")
	if !strings.Contains(out, "[PASS] dps-reachable") || !strings.Contains(out, "TCP and the server certificate only") ||
		!strings.Contains(out, "no device certificate yet (the device has not been through the factory)") ||
		!strings.Contains(out, "[SKIP] hub-reachable") || strings.Contains(out, "FAIL") {
		t.Errorf("check before the factory:\n%s", out)
	}
	if got := b.lastOffered(); got != "" {
		t.Errorf("a client certificate %q was offered before the factory", got)
	}
	// The same probe against a server the trust bundle does not know.
	other := writeFile(t, b.dir, "other-root.pem", string(simtest.PEM(simtest.NewDeviceCA(t).Root)))
	cfg, _ = os.ReadFile(b.config)
	os.WriteFile(b.config, []byte(strings.Replace(string(cfg), filepath.Join(b.dir, "roots.pem"), other, 1)), 0o600)
	out, _, _ = b.check(t, nil, "--only", "dps-reachable")
	if !strings.Contains(out, "[FAIL] dps-reachable") || !strings.Contains(out, "unknown authority") {
		t.Errorf("check before the factory, unknown server root:\n%s", out)
	}
}

// TestCheckOperationalCert: with renewal path dps and an operational
// certificate installed, cert-expiry reports that one (the hub's) and
// the device certificate, each with its expiry; so does status from the
// state files.
func TestCheckOperationalCert(t *testing.T) {
	b := newTestBoard(t, "connected", "[renewal]\npath = \"dps\"\n")
	factory := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	op := time.Date(2027, 1, 4, 0, 0, 0, 0, time.UTC)
	writeFile(t, b.state, certstore.ChainFile, leafPEM(t, "dev-1", factory))
	writeFile(t, b.state, renewal.OperationalChainFile, leafPEM(t, "dev-1", op))
	out, _, _ := b.check(t, nil, "--only", "cert-expiry")
	if !strings.Contains(out, "the hub uses the operational certificate ("+renewal.OperationalChainFile) ||
		!strings.Contains(out, "expires 2027-01-04T00:00:00Z") || !strings.Contains(out, "device certificate expires 2031-01-01T00:00:00Z") {
		t.Errorf("cert-expiry does not report the operational certificate first:\n%s", out)
	}
	// status with the agent stopped shows the same, from the files.
	st, _, _ := b.status(t, false, nil)
	if !strings.HasPrefix(row(st, "cert expiry"), "2027-01-04T00:00:00Z") || !strings.Contains(row(st, "cert expiry"), "the operational certificate the hub gets") ||
		!strings.HasPrefix(row(st, "factory cert"), "expires 2031-01-01T00:00:00Z") {
		t.Errorf("status (agent stopped) does not show the operational certificate:\n%s", st)
	}
	// Without one yet, the device certificate is the hub's.
	os.Remove(filepath.Join(b.state, renewal.OperationalChainFile))
	out, _, _ = b.check(t, nil, "--only", "cert-expiry")
	if !strings.Contains(out, "the hub uses the device certificate expires 2031-01-01") || !strings.Contains(out, "no operational certificate issued yet") {
		t.Errorf("cert-expiry without an operational certificate:\n%s", out)
	}
}

// leafPEM is a self-signed client certificate for cn, valid until notAfter.
func leafPEM(t *testing.T, cn string, notAfter time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(notAfter.Unix()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     notAfter,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestCheckPermissionHints: files the caller may not read get "run as
// root" hints, never "re-install from the jig" or "re-register". Root
// reads mode 0000 files, so this runs only as another user (by hand:
// go test -c, then setpriv --reuid=65534 ./devid-agent.test -test.run
// TestCheckPermissionHints).
func TestCheckPermissionHints(t *testing.T) {
	if asNobody(t) {
		return
	}
	b := newTestBoard(t, "connected", "")
	chain := writeFile(t, b.state, certstore.ChainFile, leafPEM(t, "dev-1", time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)))
	assignment := writeFile(t, b.state, statedir.AssignmentFile, `{"schema":1,"hub":"h","device_id":"dev-1"}`)
	os.Chmod(chain, 0)
	os.Chmod(assignment, 0)
	js, _, code := b.check(t, nil, "--json", "--only", "cert,dps-assignment")
	got := results(t, js)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, id := range []string{"cert", "dps-assignment"} {
		r := got[id]
		if r.Result != "fail" || !strings.Contains(r.Hint, "run as root") || strings.Contains(r.Hint, "jig") || strings.Contains(r.Hint, "regist") {
			t.Errorf("%s: %+v", id, r)
		}
	}
	// The reachability probes cannot use a certificate they cannot read,
	// and say so: "no device certificate yet" would be false. DPS is
	// probed without one (its endpoint here refuses TCP).
	js, _, _ = b.check(t, nil, "--json", "--only", "cert,dps-reachable,hub-reachable")
	res := results(t, js)
	if r := res["dps-reachable"]; r.Result != "fail" || !strings.Contains(r.Detail, "without a client certificate") ||
		!strings.Contains(r.Detail, "permission denied") || strings.Contains(r.Detail, "factory") {
		t.Errorf("dps-reachable with an unreadable certificate: %+v", r)
	}
	if r := res["hub-reachable"]; r.Result != "skip" || !strings.Contains(r.Detail, "permission denied") {
		t.Errorf("hub-reachable with an unreadable certificate: %+v", r)
	}
}

// asNobody runs the calling test again as uid 65534 when the tests run as
// root (as in CI), which reads mode-0000 files and so could never see a
// permission error; it reports whether it did (the caller returns). The
// child, or a test run as another user, gets false and runs the test.
func asNobody(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 || os.Getenv("DEVID_TEST_AS_NOBODY") == "1" {
		return false
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) is needed to run this test as an unprivileged user: %v", err)
	}
	// The test binary must be readable by that user: copy it out of the
	// build cache.
	dir, err := os.MkdirTemp("", "devid-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", bin, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "DEVID_TEST_AS_NOBODY=1", "HOME="+dir, "TMPDIR=/tmp")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Errorf("%s as uid 65534: %v\n%s", t.Name(), err, out)
	}
	return true
}
