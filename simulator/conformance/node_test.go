package conformance

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/hal/hosttest"
	"devid/simulator/simtest"
)

// nodeDir holds the pinned SDK (package-lock.json) and the scripts.
const nodeDir = "node"

// requireNode returns the node binary, or skips (fails when DEVID_REQUIRE
// asks for node, see hal/hosttest) when node or the SDK is not installed.
func requireNode(t *testing.T) string {
	t.Helper()
	node := hosttest.LookPath(t, hosttest.Node, "node")
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "azure-iot-device-mqtt")); err != nil {
		hosttest.Unavailable(t, hosttest.Node, "official Azure IoT Node SDK not installed in simulator/conformance/node (scripts/deps.sh installs it): %v", err)
	}
	return node
}

// nodeEvent is one JSON line printed by flow.js.
type nodeEvent = map[string]any

func evName(e nodeEvent) string { return jstr(e, "event") }

// nodeRun is a running flow.js.
type nodeRun struct {
	events chan nodeEvent
	done   chan error
	stderr *syncBuf
}

// syncBuf is a strings.Builder safe to read while the child still writes.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNode runs flow.js with cfg; the shim maps every hub host:8883 (and
// the DPS host) to the simulator's loopback addresses.
func startNode(t *testing.T, node string, tg *target, cfg map[string]any) *nodeRun {
	t.Helper()
	cfg["ready"] = tg.raw
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "flow.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var resolve []string
	add := func(host, addr, wsAddr string) {
		resolve = append(resolve, host+":8883="+addr)
		if wsAddr != "" {
			resolve = append(resolve, host+":443="+wsAddr)
		}
	}
	for _, h := range tg.ready.Hubs {
		add(h.Host, h.Addr, h.WSAddr)
	}
	add(tg.ready.DPS.Host, tg.ready.DPS.Addr, tg.ready.DPS.WSAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, node, "--require", "./shim.js", "flow.js", cfgFile)
	cmd.Dir = nodeDir
	cmd.Env = append(os.Environ(),
		"NODE_EXTRA_CA_CERTS="+tg.ready.ServerCA,
		"DEVID_RESOLVE="+strings.Join(resolve, ","),
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	r := &nodeRun{events: make(chan nodeEvent, 64), done: make(chan error, 1), stderr: &syncBuf{}}
	cmd.Stderr = r.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var e nodeEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = nodeEvent{"event": "unparsed", "line": sc.Text()}
			}
			r.events <- e
		}
		close(r.events)
		r.done <- cmd.Wait()
	}()
	return r
}

// next returns the next event, failing on an SDK error or early exit.
func (r *nodeRun) next(t *testing.T) nodeEvent {
	t.Helper()
	e, ok := <-r.events
	if !ok {
		t.Fatalf("Node SDK flow ended without a result; stderr:\n%s", r.stderr)
	}
	t.Logf("node: %v", e)
	if evName(e) == "error" {
		t.Fatalf("Node SDK reported an error at step %q: %s (transport: %v)\nstderr:\n%s",
			jstr(e, "step"), jstr(e, "message"), e["transport"], r.stderr)
	}
	return e
}

// expect reads events until one named name arrives.
func (r *nodeRun) expect(t *testing.T, name string) nodeEvent {
	t.Helper()
	for {
		if e := r.next(t); evName(e) == name {
			return e
		}
	}
}

// TestNodeSDK drives the simulator with the official Azure IoT Node.js SDK:
// X.509 group-enrollment registration, then the hub connection, telemetry
// with properties, twin GET and reported patch, a desired-property update, a
// direct method and a C2D message, over MQTT/TLS (8883) and over MQTT on
// secure WebSocket (443, /$iothub/websocket). It then checks what the
// simulator itself recorded through its control plane.
func TestNodeSDK(t *testing.T) {
	node := requireNode(t)
	t.Parallel()
	tg := startSim(t)

	// Root → intermediate → leaf; the group is anchored on the root, so the SDK
	// must present the intermediate too.
	ca := simtest.NewDeviceCA(t)
	const group = "node-sdk-group"
	tg.enrollGroup(group, simtest.PEM(ca.Root), map[string]any{
		"initialTwin": map[string]any{"properties": map[string]any{"desired": map[string]any{"telemetryInterval": 30}}},
	})
	for _, transport := range []string{"mqtt", "ws"} {
		t.Run(transport, func(t *testing.T) {
			tg := tg.on(t)
			t.Parallel()
			nodeFlow(t, node, tg, ca, group, transport, "node-sdk-"+transport+"-1")
		})
	}
	// An IEEE 802.1AR DevID certificate, as devid's factory CA issues
	// after TPM key attestation (docs/attestation.md): its subjectAltName
	// names the TPM (HardwareModuleName). DPS and the hub accept it.
	t.Run("mqtt with an 802.1AR DevID certificate", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		nodeFlow(t, node, tg, ca, group, "mqtt", "node-sdk-devid-1", hardwareModuleName(t))
	})
}

// hardwareModuleName is a subjectAltName holding only an otherName
// id-on-hardwareModuleName (RFC 4108): {hwType = TPM 2.0
// (2.23.133.1.2), hwSerialNum = 32 bytes}, encoded here independently of
// the factory CA's code.
func hardwareModuleName(t *testing.T) simtest.CertOption {
	type hwModuleName struct {
		HWType      asn1.ObjectIdentifier
		HWSerialNum []byte
	}
	inner, err := asn1.Marshal(hwModuleName{asn1.ObjectIdentifier{2, 23, 133, 1, 2}, bytes.Repeat([]byte{0xa5}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	// OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }, as
	// GeneralName [0] IMPLICIT: the SEQUENCE's contents under tag [0].
	oid, err := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 4})
	if err != nil {
		t.Fatal(err)
	}
	value, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner})
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(oid, value...)}})
	if err != nil {
		t.Fatal(err)
	}
	return func(c *x509.Certificate) {
		c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san})
	}
}

// nodeFlow is one full SDK device life on one transport.
func nodeFlow(t *testing.T, node string, tg *target, ca *simtest.DeviceCA, group, transport, cn string, opts ...simtest.CertOption) {
	leaf := ca.Issue(t, cn, opts...)
	dir := filepath.Join(t.TempDir(), "device")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := leaf.WriteFiles(t, dir)
	dev := struct{ CN, CertFile, KeyFile string }{leaf.Leaf.Subject.CommonName, certFile, keyFile}

	telemetry := map[string]any{
		"body":            `{"temperature":21.5,"humidity":40}`,
		"contentType":     "application/json",
		"contentEncoding": "utf-8",
		"messageId":       "msg-0001",
		"correlationId":   "corr-0001",
		"properties":      map[string]any{"alarm": "true", "level": "a b&c=d/é"},
	}
	methodResp := map[string]any{"rebooted": true, "in": 3}
	run := startNode(t, node, tg, map[string]any{
		"transport":  transport,
		"regId":      dev.CN,
		"certFile":   dev.CertFile,
		"keyFile":    dev.KeyFile,
		"payload":    map[string]any{"modelId": "dtmi:devid:conformance;1"},
		"telemetry":  telemetry,
		"reported":   map[string]any{"firmware": "1.2.3", "nested": map[string]any{"a": 1}},
		"method":     map[string]any{"name": "reboot", "status": 201, "response": methodResp},
		"await":      []string{"method", "c2d", "desired"},
		"desiredKey": "telemetryInterval2",
		"timeoutMs":  90000,
	})

	// 1. Registration as the SDK saw it.
	hubName, hubHost, deviceID := checkNodeRegistration(t, tg, run.expect(t, "registered"), dev.CN, group)

	// 2. Hub session; the SDK reads the twin that DPS seeded from the enrollment.
	run.expect(t, "connected")
	run.expect(t, "telemetry_sent")
	tw := run.expect(t, "twin")
	if v := jget(tw, "desired", "telemetryInterval"); v != float64(30) {
		t.Errorf("twin desired.telemetryInterval = %v, want 30 (initialTwin of the enrollment)", v)
	}
	run.expect(t, "reported_patched")
	run.expect(t, "hub_ready")

	// 3. Service side: direct method, C2D and a desired patch while connected.
	st, res := tg.invokeMethod(hubName, deviceID, "reboot", map[string]any{"delay": 3}, 30)
	if st != 200 || jget(res, "status") != float64(201) || !reflect.DeepEqual(jget(res, "payload"), jsonRound(t, methodResp)) {
		t.Errorf("direct method: HTTP %d %v; want 200 with status 201 and payload %v", st, res, methodResp)
	}
	c2d := map[string]any{
		"payload":    "hello device",
		"messageId":  "c2d-0001",
		"ack":        "full",
		"properties": map[string]any{"color": "red"},
	}
	tg.sendC2D(hubName, deviceID, c2d)
	tg.patchDesired(hubName, deviceID, map[string]any{"telemetryInterval2": 5})

	gotMethod, gotC2D, gotDesired := awaitNodeEvents(t, run)
	if jstr(gotMethod, "name") != "reboot" || jget(gotMethod, "payload", "delay") != float64(3) {
		t.Errorf("device saw method %v, want reboot with {\"delay\":3}", gotMethod)
	}
	if jstr(gotC2D, "data") != "hello device" || jstr(gotC2D, "messageId") != "c2d-0001" || jstr(gotC2D, "properties", "color") != "red" {
		t.Errorf("device saw C2D %v, want payload, messageId c2d-0001 and color=red", gotC2D)
	}
	if jget(gotDesired, "patch", "telemetryInterval2") != float64(5) || jget(gotDesired, "patch", "$version") == nil {
		t.Errorf("desired patch %v, want telemetryInterval2=5 with $version", gotDesired)
	}

	// 4. The simulator's own records.
	checkSimRecords(t, tg, dev.CN, hubName, hubHost, deviceID, telemetry)
}

// checkNodeRegistration checks the registration result the SDK saw and
// returns the assigned hub's name and host and the device ID.
func checkNodeRegistration(t *testing.T, tg *target, reg nodeEvent, cn, group string) (hubName, hubHost, deviceID string) {
	hubHost, deviceID = jstr(reg, "assignedHub"), jstr(reg, "deviceId")
	if deviceID != cn || jstr(reg, "status") != "assigned" || jstr(reg, "substatus") != "initialAssignment" {
		t.Errorf("SDK registration result = %v; want deviceId %q, status assigned, substatus initialAssignment", reg, cn)
	}
	for _, h := range tg.ready.Hubs {
		if strings.EqualFold(h.Host, hubHost) {
			hubName = h.Name
		}
	}
	if hubName == "" {
		t.Fatalf("assignedHub %q is not one of the simulator's hubs %v", hubHost, tg.ready.Hubs)
	}
	for _, f := range []string{"registrationId", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"} {
		if jstr(reg, f) == "" {
			t.Errorf("SDK registration result lacks %s: %v", f, reg)
		}
	}
	if g := jstr(reg, "x509", "enrollmentGroupId"); g != group {
		t.Errorf("registrationState.x509.enrollmentGroupId = %q, want %q", g, group)
	}
	return hubName, hubHost, deviceID
}

// awaitNodeEvents waits for the device's method, C2D and desired events,
// then for the end of the flow.
func awaitNodeEvents(t *testing.T, run *nodeRun) (gotMethod, gotC2D, gotDesired nodeEvent) {
	for gotMethod == nil || gotC2D == nil || gotDesired == nil {
		e := run.next(t)
		switch evName(e) {
		case "method":
			gotMethod = e
		case "c2d":
			gotC2D = e
		case "desired":
			gotDesired = e
		case "done", "closed":
			t.Fatalf("flow ended before method, C2D and desired update arrived")
		}
	}
	run.expect(t, "done")
	if s := run.stderr.String(); s != "" {
		t.Logf("node stderr:\n%s", s)
	}
	return gotMethod, gotC2D, gotDesired
}

// checkSimRecords checks what the simulator recorded of the SDK's flow.
func checkSimRecords(t *testing.T, tg *target, cn, hubName, hubHost, deviceID string, telemetry map[string]any) {
	rs := tg.registrationState(cn)
	if jstr(rs, "status") != "assigned" || !strings.EqualFold(jstr(rs, "assignedHub"), hubHost) || jstr(rs, "deviceId") != deviceID {
		t.Errorf("DPS registration record = %v; want assigned to %s as %s", rs, hubHost, deviceID)
	}
	if st, d := tg.device(hubName, deviceID); st != 200 || !strings.EqualFold(jstr(d, "deviceId"), deviceID) || jstr(d, "status") != "enabled" {
		t.Errorf("hub device record: HTTP %d %v; want enabled device %s", st, d, deviceID)
	}

	var rec map[string]any
	for _, r := range tg.telemetry(hubName, deviceID) {
		if jstr(r, "systemProperties", "messageId") == "msg-0001" {
			rec = r
		}
	}
	if rec == nil {
		t.Errorf("no telemetry record with messageId msg-0001 for %s: %v", deviceID, tg.telemetry(hubName, deviceID))
	} else {
		checkTelemetry(t, rec, telemetry)
		// Exactly the application properties the SDK was given, nothing added or lost.
		if app, _ := rec["applicationProperties"].(map[string]any); len(app) != len(telemetry["properties"].(map[string]any)) {
			t.Errorf("telemetry application properties %v, want exactly %v", app, telemetry["properties"])
		}
	}

	twin := tg.twin(hubName, deviceID)
	if jstr(twin, "properties", "reported", "firmware") != "1.2.3" || jget(twin, "properties", "reported", "nested", "a") != float64(1) {
		t.Errorf("twin reported = %v; want firmware 1.2.3 and nested.a 1", jget(twin, "properties", "reported"))
	}
	// The device completed the C2D message (PUBACK): nothing is left queued.
	waitFor(t, "C2D queue of the device empty", 30*time.Second, func() error {
		_, d := tg.device(hubName, deviceID)
		if n := jget(d, "cloudToDeviceMessageCount"); n != float64(0) {
			return fmt.Errorf("cloudToDeviceMessageCount = %v", n)
		}
		return nil
	})
}

// checkTelemetry compares a recorded message with what the SDK sent.
func checkTelemetry(t *testing.T, rec, sent map[string]any) {
	t.Helper()
	sys := func(name string) string { return jstr(rec, "systemProperties", name) }
	for _, f := range []string{"messageId", "correlationId", "contentType", "contentEncoding"} {
		if got := sys(f); got != sent[f] {
			t.Errorf("telemetry %s = %q, want %q (record %v)", f, got, sent[f], rec)
		}
	}
	for k, v := range sent["properties"].(map[string]any) {
		if got := jstr(rec, "applicationProperties", k); got != v {
			t.Errorf("telemetry app property %q = %q, want %q (record %v)", k, got, v, rec)
		}
	}
	if body := jstr(rec, "body"); body != sent["body"] {
		t.Errorf("telemetry body = %q, want %q", body, sent["body"])
	}
}

func jsonRound(t *testing.T, v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	json.Unmarshal(b, &out)
	return out
}

// TestNodeSDKRefused checks that the SDK reads the simulator's refusals the
// way it reads Azure's: a certificate from an unenrolled CA is a terminal
// authorization failure (not a retry loop or a timeout), and so is a hub
// connection for a device the hub does not know.
func TestNodeSDKRefused(t *testing.T) {
	node := requireNode(t)
	t.Parallel()
	tg := startSim(t)
	rogue := simtest.NewDeviceCA(t)
	leaf := rogue.Issue(t, "node-sdk-rogue-1")
	dir := filepath.Join(t.TempDir(), "device")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := leaf.WriteFiles(t, dir)
	base := map[string]any{"regId": "node-sdk-rogue-1", "certFile": certFile, "keyFile": keyFile, "timeoutMs": 60000}

	t.Run("DPS", func(t *testing.T) {
		tg := tg.on(t)
		cfg := map[string]any{"steps": []string{"register"}}
		for k, v := range base {
			cfg[k] = v
		}
		e := startNode(t, node, tg, cfg).final(t)
		if jstr(e, "step") != "register" || jstr(e, "name") != "UnauthorizedError" {
			t.Errorf("unenrolled certificate: SDK ended with %v; want UnauthorizedError at register (401)", e)
		}
	})
	t.Run("hub", func(t *testing.T) {
		tg := tg.on(t)
		cfg := map[string]any{"steps": []string{"hub"}, "assignedHub": tg.ready.Hubs[0].Host, "deviceId": "node-sdk-rogue-1"}
		for k, v := range base {
			cfg[k] = v
		}
		e := startNode(t, node, tg, cfg).final(t)
		if jstr(e, "step") != "hub" || jstr(e, "name") != "UnauthorizedError" {
			t.Errorf("unknown device: SDK ended with %v; want UnauthorizedError from CONNACK 5", e)
		}
	})
}

// final returns the last event, which must be an error.
func (r *nodeRun) final(t *testing.T) nodeEvent {
	t.Helper()
	var last nodeEvent
	for e := range r.events {
		t.Logf("node: %v", e)
		last = e
	}
	if last == nil || evName(last) != "error" {
		t.Fatalf("want the flow to end with an error event, got %v; stderr:\n%s", last, r.stderr)
	}
	return last
}

// TestNodeSDKRetries injects the transient answers the services send
// (DPS 429 with retry-after and 503 on a poll; hub throttling of telemetry,
// which over MQTT is a closed connection) and checks that the official
// SDK recognises them as transient: it retries and finishes, and every
// injected fault was consumed. (The Node SDK ignores the status of twin
// responses and fails on any body with errorCode, so twin 429 is not retried
// by this client; that is the SDK's choice, not something to test here.)
func TestNodeSDKRetries(t *testing.T) {
	node := requireNode(t)
	t.Parallel()
	tg := startSim(t)
	ca := simtest.NewDeviceCA(t)
	tg.enrollGroup("node-sdk-retry", simtest.PEM(ca.Root), nil)
	leaf := ca.Issue(t, "node-sdk-retry-1")
	dir := filepath.Join(t.TempDir(), "device")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := leaf.WriteFiles(t, dir)
	id := leaf.Leaf.Subject.CommonName

	for _, f := range []map[string]any{
		{"scope": "dps", "deviceId": id, "ops": []string{"register"}, "status": 429, "retryAfter": 1, "count": 1},
		{"scope": "dps", "deviceId": id, "ops": []string{"poll"}, "status": 503, "retryAfter": 1, "count": 1},
		{"scope": "hub", "deviceId": id, "ops": []string{"telemetry"}, "status": 429, "count": 1},
	} {
		tg.mustDo(http.MethodPost, "/sim/faults", f, nil)
	}
	run := startNode(t, node, tg, map[string]any{
		"regId": id, "certFile": certFile, "keyFile": keyFile,
		"telemetry": map[string]any{"body": "after throttling", "messageId": "retry-1"},
		"reported":  map[string]any{"retried": true}, "timeoutMs": 90000,
	})
	reg := run.expect(t, "registered")
	run.expect(t, "telemetry_sent")
	run.expect(t, "done")
	recs := tg.telemetry(jstr(reg, "assignedHub"), id)
	if len(recs) == 0 || jstr(recs[len(recs)-1], "systemProperties", "messageId") != "retry-1" {
		t.Errorf("telemetry after the throttled attempt: %v; want the SDK's retry recorded", recs)
	}

	var left []map[string]any
	tg.mustDo(http.MethodGet, "/sim/faults", nil, &left)
	for _, f := range left {
		if jstr(f, "deviceId") == id {
			t.Errorf("fault %v was never hit: the SDK did not meet the transient answer it was meant to retry", f)
		}
	}
}
