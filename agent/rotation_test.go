package agent_test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"devid/agent/renewal"
	"devid/enroll/certstore"
	"devid/enroll/keys"
	_ "devid/enroll/keys/tpmkey" // the "tpm" backend, as the binary has it
	"devid/enroll/rotate"
	"devid/hal/tpm/tpmtest"
	"devid/simulator/simtest"
)

// leafSerial reads the serial of the chain file in the board's state dir
// ("" while there is none).
func (b *board) leafSerial(name string) string {
	raw, err := os.ReadFile(filepath.Join(b.state, name))
	if err != nil {
		return ""
	}
	certs, err := certstore.ParsePEM(raw)
	if err != nil {
		b.t.Fatalf("%s: %v", name, err)
	}
	return certs[0].SerialNumber.Text(16)
}

// waitLive waits until the running agent (not the state file a killed
// one left) reports state want over the local API.
func (b *board) waitLive(want string, within time.Duration) {
	b.t.Helper()
	b.waitFor("live state "+want, within, func() bool {
		st, _ := b.api(`{"op":"status"}`)["status"].(map[string]any)
		return st["state"] == want
	})
}

// renewalStatus is status.extra.renewal from the running agent.
func (b *board) renewalStatus() map[string]any {
	st := b.api(`{"op":"status"}`)["status"].(map[string]any)
	extra, _ := st["extra"].(map[string]any)
	r, _ := extra["renewal"].(map[string]any)
	return r
}

// rotateNow invokes the rotateCredential direct method and fails unless
// the device accepted it (202).
func (b *board) rotateNow(rotateKey bool) {
	b.t.Helper()
	var out struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	code, err := b.sim.Do(http.MethodPost, "/twins/"+b.deviceID+"/methods",
		map[string]any{"methodName": rotate.MethodName, "payload": map[string]any{"rotate_key": rotateKey}, "responseTimeoutInSeconds": 30}, &out)
	if err != nil || code != 200 || out.Status != 202 {
		b.t.Fatalf("rotateCredential: http %d, %v, device said %d %s\n%s", code, err, out.Status, out.Payload, b.stderr.String())
	}
}

// waitNewLeaf waits until the chain file name holds a leaf certificate
// other than the one with serial old.
func (b *board) waitNewLeaf(what, name, old string) {
	b.t.Helper()
	b.waitFor(what, 60*time.Second, func() bool {
		s := b.leafSerial(name)
		return s != "" && s != old
	})
}

// waitFirstOperational waits for the first operational certificate and
// returns its serial.
func (b *board) waitFirstOperational() string {
	b.t.Helper()
	b.waitFor("the first operational certificate", 60*time.Second, func() bool { return b.leafSerial("operational-chain.pem") != "" })
	return b.leafSerial("operational-chain.pem")
}

// transient reports rotation leftovers in the state dir.
func (b *board) transient() []string {
	var out []string
	ents, _ := os.ReadDir(b.state)
	for _, e := range ents {
		n := e.Name()
		if strings.HasSuffix(n, rotate.StagedSuffix) || strings.HasSuffix(n, rotate.OldSuffix) || n == rotate.JournalFile {
			out = append(out, n)
		}
	}
	return out
}

// TestRenewalOnAgent runs the real agent with renewal path "dps" against
// the simulator: the first operational certificate comes from DPS
// certificate issuance, the rotateCredential direct method rotates key and
// certificate, the "renewal" desired property changes the policy, and a
// kill -9 in the middle of rotations never leaves a device that cannot
// reconnect. Telemetry keeps flowing throughout.
func TestRenewalOnAgent(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "renew-dev", "[renewal]\npath = \"dps\"\nretry = \"1m\"\n")
	s1 := b.waitFirstOperational()
	b.waitFor("reconnect after the first issuance", 30*time.Second, func() bool {
		r := b.renewalStatus()
		return r["rotations"] != nil && b.persisted().Name == "connected"
	})
	b.send(3, "a")
	b.waitDelivered("a", 3)
	if r := b.renewalStatus(); r["path"] != rotate.PathDPS || r["next"] == nil {
		t.Errorf("status renewal %v: want path %s and a next time", r, rotate.PathDPS)
	}
	// Status shows the certificate the hub gets (the DPS-issued one, which
	// expires long before the factory one), and the factory one beside it.
	st := b.api(`{"op":"status"}`)["status"].(map[string]any)
	if st["cert_kind"] != "operational" || st["cert_serial"] != s1 || st["factory_cert_expiry"] == nil || st["cert_expiry"] == st["factory_cert_expiry"] {
		t.Errorf("status certificate: kind %v serial %v (operational %s), expiry %v, factory %v", st["cert_kind"], st["cert_serial"], s1, st["cert_expiry"], st["factory_cert_expiry"])
	}
	// check probes the hub with that certificate too, and says so.
	out, err := exec.Command(agentBinary(t), "check", "--json", "--only", "hub-reachable", "--config", b.config).Output()
	var hub []struct{ Result, Detail string }
	if jerr := json.Unmarshal(out, &hub); jerr != nil || len(hub) != 1 || hub[0].Result != "pass" ||
		!strings.Contains(hub[0].Detail, "with the operational certificate ("+renewal.OperationalChainFile+", serial "+s1+")") {
		t.Errorf("check hub-reachable: %s (%v)", out, err)
	}

	// Direct method: rotate key and certificate now.
	b.rotateNow(true)
	b.waitNewLeaf("the rotated certificate", "operational-chain.pem", s1)
	b.waitState("connected", 30*time.Second)
	b.send(3, "b")
	b.waitDelivered("b", 3)

	// Desired property: the policy changes and is reported back.
	code, err := sim.Do(http.MethodPatch, "/twins/"+b.deviceID,
		map[string]any{"properties": map[string]any{"desired": map[string]any{"renewal": map[string]any{"renew_at": "50%"}}}}, nil)
	if err != nil || code/100 != 2 {
		t.Fatalf("patch desired: %d %v", code, err)
	}
	b.waitFor("the desired policy", 30*time.Second, func() bool {
		p, _ := b.renewalStatus()["policy"].(string)
		return strings.Contains(p, `renew_at = "50%"`)
	})

	// Power cuts during rotations: whatever step the kill lands on, the
	// restarted agent recovers and delivers. The kill follows the method
	// at once, then once the rotation has started, then once it has staged
	// the new credential; how far it gets before the kill lands is up to
	// the scheduler, and correctness must not depend on it.
	recovered := 0
	for i, after := range []string{"", "renewal attempt", "rotation: staged new credential"} {
		seen := strings.Count(b.stderr.String(), after)
		sim.Do(http.MethodPost, "/twins/"+b.deviceID+"/methods",
			map[string]any{"methodName": rotate.MethodName, "payload": map[string]any{"rotate_key": i%2 == 0}, "responseTimeoutInSeconds": 10}, nil)
		if after != "" {
			b.waitFor("the agent to log "+after, 60*time.Second, func() bool { return strings.Count(b.stderr.String(), after) > seen })
		}
		b.kill()
		b.start()
		b.waitLive("connected", 60*time.Second)
		if left := b.transient(); len(left) > 0 {
			t.Errorf("after kill %d: rotation leftovers %v\n--- agent log ---\n%s", i, left, b.stderr.String())
		}
		if strings.Contains(b.stderr.String(), "recovered an interrupted credential rotation") {
			recovered++
		}
		tag := "k" + string(rune('0'+i))
		b.send(2, tag)
		b.waitDelivered(tag, 2)
	}
	// Which step a kill lands on is up to the scheduler; enroll/rotate's
	// TestKill9AtEveryStep covers each step deterministically.
	t.Logf("%d of 3 restarts recovered an interrupted rotation", recovered)
}

// TestRevokedAndReenabled: a disabled enrollment sends the agent to
// "revoked" (reported, slow retries, nothing deleted); enabling it again
// brings the device back on its own. A revoked certificate also leads
// to "revoked" with the identity kept.
func TestRevokedAndReenabled(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "revoke-dev", "")
	keyBefore, _ := os.ReadFile(filepath.Join(b.state, "device.key"))
	chainBefore, _ := os.ReadFile(filepath.Join(b.state, "device-chain.pem"))

	sim.MustDo(http.MethodPost, "/sim/enrollmentGroups/"+b.group+"/disable", nil, nil)
	sim.MustDo(http.MethodPost, "/sim/devices/"+sim.Hub("").Name+"/"+b.deviceID+"/disable", nil, nil)
	b.waitState("revoked", 60*time.Second)
	if st := b.persisted(); st.RevokedReason == "" && st.LastError == "" {
		t.Errorf("revoked without a reason: %+v", st)
	}
	keyNow, _ := os.ReadFile(filepath.Join(b.state, "device.key"))
	chainNow, _ := os.ReadFile(filepath.Join(b.state, "device-chain.pem"))
	if string(keyNow) != string(keyBefore) || string(chainNow) != string(chainBefore) {
		t.Fatal("the revoked state changed or deleted the identity")
	}

	sim.MustDo(http.MethodPost, "/sim/enrollmentGroups/"+b.group+"/enable", nil, nil)
	sim.MustDo(http.MethodPost, "/sim/devices/"+sim.Hub("").Name+"/"+b.deviceID+"/enable", nil, nil)
	b.waitState("connected", 60*time.Second)
	b.send(2, "back")
	b.waitDelivered("back", 2)

	// A revoked certificate: DPS and the hub refuse it.
	raw, _ := os.ReadFile(filepath.Join(b.state, "device-chain.pem"))
	certs, err := certstore.ParsePEM(raw)
	if err != nil {
		t.Fatal(err)
	}
	sim.RevokeCert(t, certs[0])
	b.waitState("revoked", 60*time.Second)
	if _, err := os.Stat(filepath.Join(b.state, "device.key")); err != nil {
		t.Errorf("revoked certificate: key gone: %v", err)
	}
}

// TestTPMRotationOnAgent: the factory key and the operational key live in
// a (software) TPM; the rotateCredential direct method makes a new TPM
// key under a staged blob, proves it on the hub and promotes it.
func TestTPMRotationOnAgent(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	sw := tpmtest.Start(t)
	b := newBoard(t, sim, "tpm-renew-dev", "[renewal]\npath = \"dps\"\nretry = \"1m\"\n")
	spec := "tpm:" + sw.Addr()
	// Re-make the factory identity in the TPM, from a CA of our own.
	os.Remove(filepath.Join(b.state, "device.key"))
	st, err := keys.Open(spec, b.state)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Create()
	if err != nil {
		t.Fatal(err)
	}
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "grp-tpm", ca.Root, simtest.IssueCertificates())
	leaf := ca.IssueFor(t, b.deviceID, k.Public())
	if c, ok := k.(interface{ Close() error }); ok {
		c.Close()
	}
	os.WriteFile(filepath.Join(b.state, "device-chain.pem"), certstore.EncodePEM(leaf, ca.Intermediate), 0o600)
	cfg, _ := os.ReadFile(b.config)
	cfg = []byte(strings.Replace(string(cfg), `backend = "file:`+b.state+`/device.key"`, `backend = "`+spec+`"`, 1))
	os.WriteFile(b.config, cfg, 0o644)

	b.start()
	b.waitFirstOperational()
	if _, err := os.Stat(filepath.Join(b.state, "operational.tpmkey")); err != nil {
		t.Fatalf("operational key is not a TPM blob: %v", err)
	}
	b.waitLive("connected", 60*time.Second)
	s1 := b.leafSerial("operational-chain.pem")
	blob1, _ := os.ReadFile(filepath.Join(b.state, "operational.tpmkey"))
	b.rotateNow(true)
	b.waitNewLeaf("the rotated TPM credential", "operational-chain.pem", s1)
	blob2, _ := os.ReadFile(filepath.Join(b.state, "operational.tpmkey"))
	if string(blob1) == string(blob2) {
		t.Error("the TPM key blob did not change: no key rotation")
	}
	b.waitLive("connected", 60*time.Second)
	b.send(2, "tpm")
	b.waitDelivered("tpm", 2)
	if left := b.transient(); len(left) > 0 {
		t.Errorf("leftovers %v", left)
	}
}

// TestRevokedOperationalCertificate: with path dps, revoking the
// operational certificate makes the hub refuse it; the agent gets a new
// one through DPS with the factory credential and reconnects on its own.
func TestRevokedOperationalCertificate(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	b := newBoard(t, sim, "oprevoke-dev", "[renewal]\npath = \"dps\"\nretry = \"1m\"\n")
	b.start()
	b.waitFirstOperational()
	b.waitLive("connected", 60*time.Second)
	s1 := b.leafSerial("operational-chain.pem")
	raw, _ := os.ReadFile(filepath.Join(b.state, "operational-chain.pem"))
	certs, err := certstore.ParsePEM(raw)
	if err != nil {
		t.Fatal(err)
	}
	sim.RevokeCert(t, certs[0])
	b.waitFor("a replacement operational certificate", 90*time.Second, func() bool {
		s := b.leafSerial("operational-chain.pem")
		return s != "" && s != s1
	})
	b.waitLive("connected", 90*time.Second)
	b.send(2, "after-revoke")
	b.waitDelivered("after-revoke", 2)
	if testing.Verbose() {
		t.Log(b.stderr.String())
	}
}

// TestESTRenewalOnAgent: renewal path "est" on the real agent: the
// rotateCredential direct method re-enrolls over EST with the current
// certificate, the renewed device certificate registers with DPS and
// connects, and telemetry continues.
func TestESTRenewalOnAgent(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	b := newBoard(t, sim, "est-renew-dev", "[renewal]\npath = \"est\"\nest_url = \""+sim.Ready.ESTURL+"\"\nretry = \"1m\"\n")
	// EST certificates come from the sim's issuing CA; DPS must know it.
	raw, err := os.ReadFile(sim.Ready.IssuingCA)
	if err != nil {
		t.Fatal(err)
	}
	icerts, err := certstore.ParsePEM(raw)
	if err != nil {
		t.Fatal(err)
	}
	sim.EnrollGroup(t, "grp-est-issuing", icerts[len(icerts)-1])
	b.start()
	b.waitLive("connected", 60*time.Second)
	s1 := b.leafSerial("device-chain.pem")
	b.rotateNow(false)
	b.waitNewLeaf("the EST-renewed certificate", "device-chain.pem", s1)
	b.waitLive("connected", 60*time.Second)
	b.send(2, "est")
	b.waitDelivered("est", 2)
	if r := b.renewalStatus(); r["path"] != rotate.PathEST || r["rotations"] == nil {
		t.Errorf("status renewal %v", r)
	}
}

// startEnv is start with extra environment variables.
func (b *board) startEnv(env ...string) {
	b.t.Helper()
	b.cmd = exec.Command(agentBinary(b.t), "run", "--config", b.config)
	b.stderr = &lockedBuffer{}
	b.cmd.Stderr = b.stderr
	b.cmd.Env = append(append(os.Environ(), "DEVID_CLOCK_FILE="+b.clock), env...)
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.exited = make(chan struct{})
	cmd, exited := b.cmd, b.exited
	go func() { cmd.Wait(); close(exited) }()
	b.t.Cleanup(func() { b.kill() })
}

// TestKill9AtEveryRotationStep cuts the agent's power (SIGKILL, from
// inside, right after the named step) at every step of a key rotation
// started by the rotateCredential direct method, then boots it again:
// it always reconnects and delivers, with the old credential when the
// cut came before the new one was proved and the new one after, and no
// rotation leftovers.
func TestKill9AtEveryRotationStep(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	b := newBoard(t, sim, "cut-dev", "[renewal]\npath = \"dps\"\nretry = \"1m\"\n")
	b.start()
	b.waitFirstOperational()
	b.waitLive("connected", 60*time.Second)
	steps := []string{"begin", "key", "issued", "staged", "probed", "proved", "backup-0", "rename-0", "backup-1", "rename-1", "committed", "destroyed"}
	for i, step := range steps {
		before := b.leafSerial("operational-chain.pem")
		b.kill()
		b.startEnv(renewal.RotateCrashEnv + "=" + step)
		b.waitLive("connected", 60*time.Second)
		sim.Do(http.MethodPost, "/twins/"+b.deviceID+"/methods",
			map[string]any{"methodName": rotate.MethodName, "payload": map[string]any{"rotate_key": true}, "responseTimeoutInSeconds": 10}, nil)
		select {
		case <-b.exited:
		case <-time.After(60 * time.Second):
			t.Fatalf("step %s: the agent did not cut itself off\n%s", step, b.stderr.String())
		}
		b.cmd = nil
		b.start()
		b.waitLive("connected", 60*time.Second)
		after := b.leafSerial("operational-chain.pem")
		if wantNew := i >= slices.Index(steps, "proved"); (after != before) != wantNew {
			t.Errorf("cut after %s: credential changed=%v, want %v", step, after != before, wantNew)
		}
		if left := b.transient(); len(left) > 0 {
			t.Errorf("cut after %s: leftovers %v", step, left)
		}
		tag := "cut-" + step
		b.send(1, tag)
		b.waitDelivered(tag, 1)
	}
}

// TestHubRenewalOnAgent: renewal.path = "hub". The first operational
// certificate comes from DPS certificate issuance; the rotateCredential
// direct method then renews over the hub's $iothub/credentials topic
// (docs/dps.md, certificate renewal, preview) without another DPS registration, and the
// agent reconnects with the hub-issued certificate.
func TestHubRenewalOnAgent(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "hubrenew-dev", "[renewal]\npath = \"hub\"\nretry = \"1m\"\n")
	s1 := b.waitFirstOperational()
	b.waitFor("reconnect after the first issuance", 30*time.Second, func() bool {
		return b.renewalStatus()["rotations"] != nil && b.persisted().Name == "connected"
	})
	if r := b.renewalStatus(); r["path"] != rotate.PathHub {
		t.Errorf("status renewal path %v, want %s", r["path"], rotate.PathHub)
	}
	reg := sim.RegistrationState(t, b.deviceID)

	b.rotateNow(true)
	b.waitNewLeaf("the hub-issued certificate", "operational-chain.pem", s1)
	b.waitLive("connected", 30*time.Second)
	log := b.stderr.String()
	if !strings.Contains(log, "renewal: hub certificate issuance") || strings.Contains(log, "issuing through DPS") {
		t.Fatalf("the renewal did not go through the hub\n--- agent log ---\n%s", log)
	}
	after := sim.RegistrationState(t, b.deviceID)
	for _, k := range []string{"etag", "lastUpdatedDateTimeUtc"} {
		if reg[k] == nil || after[k] != reg[k] {
			t.Errorf("DPS registration %s %v -> %v: a hub renewal must not register again", k, reg[k], after[k])
		}
	}
	b.send(3, "h")
	b.waitDelivered("h", 3)
}
