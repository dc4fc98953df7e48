// Package simtest runs devid-sim for tests: it builds the binary once per
// test process, starts it on a temporary state directory, parses its ready
// line and offers helpers for device certificates, enrollment, telemetry,
// faults, revocation and restarts. With InProcess the same harness runs
// the simulator inside the test process instead (the simulator's own unit
// tests do). It shares the wire types with the server through simapi and
// imports no server code.
//
// Typical use:
//
//	sim := simtest.Start(t)
//	ca := simtest.NewDeviceCA(t)
//	sim.EnrollGroup(t, "group1", ca.Root)
//	dev := ca.Issue(t, "device-001")
//	tlsCfg := sim.TLSConfig(sim.Ready.DPS.Host, dev.TLSCertificate())
//	// dial sim.Ready.DPS.Addr with tlsCfg ...
package simtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
	"devid/simulator/simapi"
	"devid/simulator/simproc"
)

// The wire types of devid-sim, shared with the server through simapi.
type (
	// Ready is devid-sim's ready line.
	Ready = simapi.Ready
	// Endpoint is the DPS endpoint of the ready line.
	Endpoint = simapi.Endpoint
	// Hub is one hub of the ready line.
	Hub = simapi.Hub
	// Telemetry is one recorded device-to-cloud message.
	Telemetry = simapi.TelemetryRecord
	// Fault is the control plane's fault body (see docs/simulator.md).
	Fault = simapi.Fault
)

// Option configures Start.
type Option func(*options)

type options struct {
	args   []string
	state  string
	hubs   []string
	fast   bool
	inProc StartFunc
}

// WithArgs adds raw `devid-sim serve` flags (e.g. "--hub-retain", "close").
func WithArgs(args ...string) Option { return func(o *options) { o.args = append(o.args, args...) } }

// WithStateDir uses dir instead of a fresh t.TempDir().
func WithStateDir(dir string) Option { return func(o *options) { o.state = dir } }

// WithHubs names the simulated hubs (default one hub, "sim-hub-1").
func WithHubs(names ...string) Option { return func(o *options) { o.hubs = names } }

// WithRealTiming keeps the service-like DPS timing (retry-after 3 s, one
// extra "assigning" poll). By default simtest uses retry-after 1 and no
// extra poll so tests are quick.
func WithRealTiming() Option { return func(o *options) { o.fast = false } }

// Sim is a running simulator: the devid-sim binary, or an in-process
// one (InProcess).
type Sim struct {
	Ready Ready
	// StateDir is the simulator's state directory.
	StateDir string

	t       testing.TB
	args    []string // `devid-sim serve` flags
	inProc  StartFunc
	running instance
	stderr  *syncBuffer
	mu      sync.Mutex
}

// Server is a simulator running in the test process; *simulator.Sim is one.
type Server interface {
	Ready() simapi.Ready
	Close() error
}

// StartFunc starts a simulator in the test process from `devid-sim
// serve` flags, logging to log. simulator.StartArgs is one, through a
// one-line adapter (simtest does not import the server).
type StartFunc func(args []string, log io.Writer) (Server, error)

// InProcess runs the simulator inside the test process through start
// instead of building and running the devid-sim binary. Unit tests of the
// simulator use it: no subprocess, and the race detector and coverage see
// the server. End-to-end tests keep the binary.
func InProcess(start StartFunc) Option { return func(o *options) { o.inProc = start } }

// instance is one run of the simulator.
type instance interface {
	ready() simapi.Ready
	stop()
}

type procInstance struct{ p *simproc.Proc }

func (i procInstance) ready() simapi.Ready { return i.p.Ready }
func (i procInstance) stop()               { i.p.Stop() }

type serverInstance struct{ s Server }

func (i serverInstance) ready() simapi.Ready { return i.s.Ready() }
func (i serverInstance) stop()               { _ = i.s.Close() }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds devid-sim once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		// One binary per test process in a per-user directory; binaries of
		// processes that no longer exist are removed first, so repeated
		// test runs do not fill the temp directory.
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("devid-simtest-%d", os.Getuid()))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			buildErr = err
			return
		}
		if ents, err := os.ReadDir(dir); err == nil {
			for _, e := range ents {
				var pid int
				if _, err := fmt.Sscanf(e.Name(), "devid-sim-%d", &pid); err == nil && pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH {
					_ = os.Remove(filepath.Join(dir, e.Name()))
				}
			}
		}
		binPath = filepath.Join(dir, fmt.Sprintf("devid-sim-%d", os.Getpid()))
		args := []string{"build", "-o", binPath}
		if os.Getenv("SIMTEST_RACE") != "" {
			args = append(args, "-race") // race-check the simulator itself
		}
		cmd := exec.Command("go", append(args, "./simulator/cmd/devid-sim")...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build devid-sim: %v\n%s", err, b)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Start starts devid-sim (built once per test process; in process with
// InProcess), waits until it is ready and registers cleanup that stops it.
func Start(t testing.TB, opts ...Option) *Sim {
	t.Helper()
	o := &options{fast: true}
	for _, f := range opts {
		f(o)
	}
	if o.state == "" {
		o.state = t.TempDir()
	}
	args := []string{"--state", o.state}
	if len(o.hubs) > 0 {
		args = append(args, "--hubs", strings.Join(o.hubs, ","))
	}
	if o.fast {
		args = append(args, "--retry-after", "1", "--assigning-polls", "0")
	}
	args = append(args, o.args...)
	s := &Sim{t: t, StateDir: o.state, args: args, inProc: o.inProc}
	if err := s.run(args); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 1<<20 {
		b.b.Reset()
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// run starts one instance with serve flags args; its log goes to a fresh
// buffer.
func (s *Sim) run(args []string) error {
	buf := &syncBuffer{}
	var inst instance
	if s.inProc != nil {
		srv, err := s.inProc(args, buf)
		if err != nil {
			return fmt.Errorf("in-process simulator: %v: %s", err, buf.String())
		}
		inst = serverInstance{srv}
	} else {
		p, err := simproc.Start(context.Background(), Binary(s.t), append([]string{"serve"}, args...), simproc.Options{Stderr: buf})
		if err != nil {
			return fmt.Errorf("%v: %s", err, buf.String())
		}
		inst = procInstance{p}
	}
	s.running, s.stderr, s.Ready = inst, buf, inst.ready()
	return nil
}

// Stop stops the simulator (idempotent).
func (s *Sim) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running != nil {
		s.running.stop()
		s.running = nil
		if bad := problems(s.stderr.String()); bad != "" {
			s.t.Errorf("devid-sim reported a data race or panic:\n%s", bad)
		}
	}
}

// Stderr returns the simulator's log so far.
func (s *Sim) Stderr() string { return s.stderr.String() }

// Restart stops the simulator and starts it again on the same ports and
// state directory.
func (s *Sim) Restart() {
	s.t.Helper()
	s.Stop()
	r := s.Ready
	args := append([]string{}, s.args...)
	args = append(args, "--dps-addr", r.DPS.Addr, "--dps-ws-addr", r.DPS.WSAddr,
		"--control-addr", strings.TrimPrefix(r.ControlURL, "http://"), "--est-addr", strings.TrimPrefix(r.ESTURL, "https://"))
	for _, h := range r.Hubs {
		args = append(args, "--hub-addr", h.Name+"="+h.Addr, "--hub-ws-addr", h.Name+"="+h.WSAddr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A just-closed port can linger briefly: retry (clocktest.Poll, the
	// one wall-clock wait, as the simulator is a real process).
	var err error
	if !clocktest.Poll(5*time.Second, func() bool { err = s.run(args); return err == nil }) {
		s.t.Fatalf("devid-sim restart failed: %v", err)
	}
}

// Hub returns the ready-line hub by name (first hub for "").
func (s *Sim) Hub(name string) Hub {
	for _, h := range s.Ready.Hubs {
		if h.Name == name || name == "" {
			return h
		}
	}
	s.t.Fatalf("no hub %q", name)
	return Hub{}
}

// Resolve returns host -> addr dial overrides for DPS and every hub.
func (s *Sim) Resolve() map[string]string {
	m := map[string]string{s.Ready.DPS.Host: s.Ready.DPS.Addr}
	for _, h := range s.Ready.Hubs {
		m[h.Host] = h.Addr
	}
	return m
}

// ServerRoots returns a pool holding the simulator's server root.
func (s *Sim) ServerRoots() *x509.CertPool {
	b, err := os.ReadFile(s.Ready.ServerCA)
	if err != nil {
		s.t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		s.t.Fatalf("%s: no certificate", s.Ready.ServerCA)
	}
	return p
}

// TLSConfig is a client config for serverName presenting cert.
func (s *Sim) TLSConfig(serverName string, cert tls.Certificate) *tls.Config {
	return &tls.Config{ServerName: serverName, RootCAs: s.ServerRoots(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// Do calls the control plane: method, path (e.g. "/sim/faults"), JSON in
// (nil for none) and JSON out (nil to discard). It returns the HTTP status;
// non-2xx is an error carrying the body.
func (s *Sim) Do(method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.Ready.ControlURL+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := s.Ready.Authorize(req); err != nil {
		return 0, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode %q: %w", method, path, b, err)
		}
	}
	return resp.StatusCode, nil
}

// MustDo is Do that fails the test on error.
func (s *Sim) MustDo(method, path string, in, out any) {
	s.t.Helper()
	if _, err := s.Do(method, path, in, out); err != nil {
		s.t.Fatal(err)
	}
}

// EnrollmentOption adjusts an enrollment body before it is sent.
type EnrollmentOption func(map[string]any)

// Disabled creates the enrollment with provisioningStatus "disabled".
func Disabled() EnrollmentOption {
	return func(m map[string]any) { m["provisioningStatus"] = "disabled" }
}

// LinkedHubs restricts the enrollment to these hub host names.
func LinkedHubs(hosts ...string) EnrollmentOption {
	return func(m map[string]any) { m["iotHubs"] = hosts }
}

// Policy sets the allocation policy (hashed, static, geoLatency, custom).
func Policy(p string) EnrollmentOption { return func(m map[string]any) { m["allocationPolicy"] = p } }

// InitialDesired sets initialTwin.properties.desired.
func InitialDesired(d map[string]any) EnrollmentOption {
	return func(m map[string]any) {
		m["initialTwin"] = map[string]any{"properties": map[string]any{"desired": d}}
	}
}

// Reprovision sets the reprovision policy.
func Reprovision(updateHub, migrate bool) EnrollmentOption {
	return func(m map[string]any) {
		m["reprovisionPolicy"] = map[string]bool{"updateHubAssignment": updateHub, "migrateDeviceData": migrate}
	}
}

// IssueCertificates links the enrollment to a credential policy: DPS then
// issues a certificate for a register request's csr (docs/simulator.md).
// Without it, like on Azure, the enrollment issues nothing.
func IssueCertificates() EnrollmentOption {
	return func(m map[string]any) { m["x-sim-credentialPolicy"] = "sim-policy" }
}

// Field sets any enrollment field.
func Field(k string, v any) EnrollmentOption { return func(m map[string]any) { m[k] = v } }

// EnrollGroup creates (or replaces) an X.509 enrollment group anchored on ca.
func (s *Sim) EnrollGroup(t testing.TB, id string, ca *x509.Certificate, opts ...EnrollmentOption) {
	t.Helper()
	m := map[string]any{
		"enrollmentGroupId":  id,
		"provisioningStatus": "enabled",
		"attestation": map[string]any{"type": "x509", "x509": map[string]any{
			"signingCertificates": map[string]any{"primary": map[string]string{"certificate": string(PEM(ca))}}}},
	}
	for _, o := range opts {
		o(m)
	}
	if _, err := s.Do("PUT", "/enrollmentGroups/"+url.PathEscape(id)+"?api-version=2021-10-01", m, nil); err != nil {
		t.Fatal(err)
	}
}

// EnrollIndividual creates an individual X.509 enrollment for leaf.
func (s *Sim) EnrollIndividual(t testing.TB, registrationID string, leaf *x509.Certificate, opts ...EnrollmentOption) {
	t.Helper()
	m := map[string]any{
		"registrationId":     registrationID,
		"provisioningStatus": "enabled",
		"attestation": map[string]any{"type": "x509", "x509": map[string]any{
			"clientCertificates": map[string]any{"primary": map[string]string{"certificate": string(PEM(leaf))}}}},
	}
	for _, o := range opts {
		o(m)
	}
	if _, err := s.Do("PUT", "/enrollments/"+url.PathEscape(registrationID)+"?api-version=2021-10-01", m, nil); err != nil {
		t.Fatal(err)
	}
}

// Telemetry returns every recorded message of deviceID ("" = all).
func (s *Sim) Telemetry(t testing.TB, deviceID string) []Telemetry {
	t.Helper()
	var out []Telemetry
	q := url.Values{"deviceId": {deviceID}, "limit": {"100000"}}
	if _, err := s.Do("GET", "/sim/telemetry?"+q.Encode(), nil, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// WaitTelemetry waits up to timeout until deviceID has at least n recorded
// messages and returns them; it fails the test otherwise.
func (s *Sim) WaitTelemetry(t testing.TB, deviceID string, n int, timeout time.Duration) []Telemetry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		var out []Telemetry
		q := url.Values{"deviceId": {deviceID}, "limit": {"100000"}, "min": {fmt.Sprint(n)}, "wait": {left.Round(time.Millisecond).String()}}
		if _, err := s.Do("GET", "/sim/telemetry?"+q.Encode(), nil, &out); err != nil {
			t.Fatal(err)
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %q: %d telemetry messages after %v, want %d", deviceID, len(out), timeout, n)
		}
	}
}

// SetFault injects a fault and returns its ID.
func (s *Sim) SetFault(t testing.TB, f Fault) string {
	t.Helper()
	var out Fault
	if _, err := s.Do("POST", "/sim/faults", f, &out); err != nil {
		t.Fatal(err)
	}
	return out.ID
}

// ClearFaults removes every fault.
func (s *Sim) ClearFaults(t testing.TB) {
	t.Helper()
	if _, err := s.Do("DELETE", "/sim/faults", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// RevokeCert revokes a certificate: DPS answers 401 and hubs CONNACK 5 for
// chains containing it; live connections using it are closed; if the
// simulator issued it, it appears on the CRL.
func (s *Sim) RevokeCert(t testing.TB, c *x509.Certificate) {
	t.Helper()
	if _, err := s.Do("POST", "/sim/revoke", map[string]string{"certificate": string(PEM(c))}, nil); err != nil {
		t.Fatal(err)
	}
}

// SendC2D queues a cloud-to-device message for deviceID on hub ("" = first).
func (s *Sim) SendC2D(t testing.TB, hub, deviceID, payload string, props map[string]string) string {
	t.Helper()
	var out struct {
		MessageID string `json:"messageId"`
	}
	if _, err := s.Do("POST", "/sim/c2d", map[string]any{"hub": hub, "deviceId": deviceID, "payload": payload, "properties": props}, &out); err != nil {
		t.Fatal(err)
	}
	return out.MessageID
}

// RegistrationState returns DPS's registration record for id.
func (s *Sim) RegistrationState(t testing.TB, id string) map[string]any {
	t.Helper()
	var out map[string]any
	if _, err := s.Do("GET", "/registrations/"+url.PathEscape(id)+"?api-version=2021-10-01", nil, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// problems returns the race reports and panics in a devid-sim log. A
// race inside mochi's own Server.Close (its shutdown path races with a
// connection being accepted; not ours to fix) is ignored.
func problems(log string) string {
	var out []string
	for _, blk := range strings.Split(log, "==================") {
		if strings.Contains(blk, "WARNING: DATA RACE") && !strings.Contains(blk, "mochi-mqtt/server/v2.(*Server).Close()") {
			out = append(out, blk)
		}
	}
	if i := strings.Index(log, "panic:"); i >= 0 {
		out = append(out, log[i:])
	}
	return strings.Join(out, "\n")
}
