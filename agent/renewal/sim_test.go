package renewal

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/dps"
	"devid/enroll/credential"
	"devid/enroll/rotate"
	"devid/simulator/simtest"
)

// simDevice is a device enrolled in a running devid-sim: a factory
// (onboarding) credential in a group enrollment, and an empty operational
// slot that DPS certificate issuance fills.
type simDevice struct {
	sim     *simtest.Sim
	ca      *simtest.DeviceCA
	factory *simtest.DeviceCert
	dir     string
	net     dps.Network
	slot    rotate.Slot
	rot     *rotate.Rotator

	mu       sync.Mutex
	hub, dev string
}

// simPoll makes DPS polls honour the sim's retry-after (1 s under simtest)
// instead of the 2 s floor, which only slows the tests down.
const simPoll = -1

func newSimDevice(t *testing.T, id string) *simDevice {
	t.Helper()
	sim := simtest.Start(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g-"+id, ca.Root, simtest.IssueCertificates())
	b, err := os.ReadFile(sim.Ready.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := dps.ParseTrustBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	d := &simDevice{sim: sim, ca: ca, factory: ca.Issue(t, id), dir: t.TempDir(),
		net: dps.Network{Resolve: sim.Resolve(), TrustBundle: bundle}}
	d.slot = rotate.Slot{KeySpec: "file:" + filepath.Join(d.dir, "operational.key"), ChainPath: filepath.Join(d.dir, "operational-chain.pem")}
	d.rot = &rotate.Rotator{
		StateDir: d.dir, Slot: d.slot, DeviceID: id, NewKey: true,
		Issuer: &DPSIssuer{
			Config: dps.Config{
				Endpoint: sim.Ready.DPS.Host + ":8883", IDScope: sim.Ready.IDScope, Network: d.net,
				Certificate: (&credential.Credential{Signer: d.factory.Key, Chain: d.factory.Chain}).TLSCertificate(), Timeout: 30 * time.Second,
				MinPollInterval: simPoll,
			},
			OnAssigned: func(r *dps.Result) { d.mu.Lock(); d.hub, d.dev = r.AssignedHub, r.DeviceID; d.mu.Unlock() },
		},
		Probe: d.connect,
	}
	return d
}

// connect is the probe: a real MQTT connection to the assigned hub.
func (d *simDevice) connect(ctx context.Context, c credential.Credential) error {
	d.mu.Lock()
	hub, dev := d.hub, d.dev
	d.mu.Unlock()
	if hub == "" {
		return errors.New("no hub assigned yet")
	}
	h, err := dps.ConnectHub(ctx, dps.HubConfig{Host: hub, DeviceID: dev, Certificate: c.TLSCertificate(),
		Network: d.net, ConnectTimeout: 15 * time.Second})
	if err != nil {
		return err
	}
	return h.Close()
}

// TestDPSIssuanceOnSim: path a) against the simulator. The first
// rotation fills the empty operational slot from DPS's
// issuedCertificateChain; a second one replaces key and certificate; a
// DPS refusal keeps the current credential working; and after the
// operational certificate is revoked the factory credential still gets a
// new one, so a revoked or expired operational certificate never strands
// the device.
func TestDPSIssuanceOnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	d := newSimDevice(t, "rot-dps-1")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	first, err := d.rot.Rotate(ctx)
	if err != nil {
		t.Fatalf("first issuance: %v", err)
	}
	if first.Path != rotate.PathDPS {
		t.Errorf("path %q", first.Path)
	}
	c1, err := rotate.LoadCredential(d.slot, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Leaf().Issuer.CommonName == d.ca.Intermediate.Subject.CommonName {
		t.Error("operational certificate was signed by the factory CA, not issued by DPS")
	}
	if err := d.connect(ctx, c1); err != nil {
		t.Fatalf("operational credential does not connect: %v", err)
	}

	second, err := d.rot.Rotate(ctx)
	if err != nil || second.Serial == first.Serial {
		t.Fatalf("second rotation: %+v %v", second, err)
	}

	// DPS down: the rotation fails, the credential in place still connects.
	d.sim.SetFault(t, simtest.Fault{Scope: "dps", Ops: []string{"register"}, Status: 503, Count: 100})
	fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
	defer fcancel()
	if _, err := d.rot.Rotate(fctx); !errors.Is(err, rotate.ErrIssue) {
		t.Errorf("rotation with DPS failing: %v, want rotate.ErrIssue", err)
	}
	d.sim.ClearFaults(t)
	c2, err := rotate.LoadCredential(d.slot, d.dir)
	if err != nil || hex.EncodeToString(c2.Leaf().SerialNumber.Bytes()) != second.Serial {
		t.Fatalf("after refused renewal: %v (serial %x, want %s)", err, c2.Leaf().SerialNumber.Bytes(), second.Serial)
	}
	if err := d.connect(ctx, c2); err != nil {
		t.Fatalf("credential stopped working after a refused renewal: %v", err)
	}

	// Revoked operational certificate: the hub refuses it, and a
	// rotation through DPS with the factory credential recovers.
	d.sim.RevokeCert(t, c2.Leaf())
	if err := d.connect(ctx, c2); !errors.Is(err, dps.ErrNotAuthorized) {
		t.Errorf("hub with a revoked certificate: %v, want ErrNotAuthorized", err)
	}
	third, err := d.rot.Rotate(ctx)
	if err != nil {
		t.Fatalf("rotation after revocation: %v", err)
	}
	c3, _ := rotate.LoadCredential(d.slot, d.dir)
	if err := d.connect(ctx, c3); err != nil || third.Serial == second.Serial {
		t.Fatalf("after revocation: %v", err)
	}
}

// TestESTReenrollOnSim: path b) against the simulator's EST server:
// /simplereenroll authenticated with the current certificate, once for the
// same key and once with key rotation (path c). The renewed credential
// connects to the hub, and registers with DPS again (as the agent does
// when its certificate changed).
func TestESTReenrollOnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	const id = "rot-est-1"
	d := newSimDevice(t, id)
	issuing, err := os.ReadFile(d.sim.Ready.IssuingCA)
	if err != nil {
		t.Fatal(err)
	}
	icerts, err := dps.ParseTrustBundle(issuing)
	if err != nil {
		t.Fatal(err)
	}
	// EST-issued certificates chain to the sim's issuing CA; DPS must
	// know that CA for the renewed device to register again.
	d.sim.EnrollGroup(t, "g-est-issuing", icerts[len(icerts)-1])

	// The device slot holds the factory credential, as written by the jig.
	slot := rotate.Slot{KeySpec: "file:" + filepath.Join(d.dir, "device.key"), ChainPath: filepath.Join(d.dir, "device-chain.pem")}
	if err := os.WriteFile(filepath.Join(d.dir, "device.key"), d.factory.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(slot.ChainPath, d.factory.ChainPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	register := func(c credential.Credential) error {
		res, err := dps.Register(ctx, dps.Config{Endpoint: d.sim.Ready.DPS.Host + ":8883", IDScope: d.sim.Ready.IDScope,
			Network: d.net, Certificate: c.TLSCertificate(), Timeout: 30 * time.Second, MinPollInterval: simPoll})
		if err == nil {
			d.mu.Lock()
			d.hub, d.dev = res.AssignedHub, res.DeviceID
			d.mu.Unlock()
		}
		return err
	}
	cur, err := rotate.LoadCredential(slot, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := register(cur); err != nil {
		t.Fatalf("first registration: %v", err)
	}
	// The probe does what the agent does with a new certificate: register
	// with DPS (the hub learns the new credential), then connect.
	probe := func(ctx context.Context, c credential.Credential) error {
		if err := register(c); err != nil {
			return err
		}
		return d.connect(ctx, c)
	}
	rot := &rotate.Rotator{StateDir: d.dir, Slot: slot, DeviceID: id, Probe: probe,
		Issuer: &rotate.ESTIssuer{URL: d.sim.Ready.ESTURL, ServerRoots: d.sim.ServerRoots()}}
	for _, newKey := range []bool{false, true} {
		rot.NewKey = newKey
		res, err := rot.Rotate(ctx)
		if err != nil {
			t.Fatalf("EST rotation newKey=%v: %v", newKey, err)
		}
		c, err := rotate.LoadCredential(slot, d.dir)
		if err != nil {
			t.Fatal(err)
		}
		if samePublicKey(c.Signer.Public(), cur.Signer.Public()) == newKey || res.Path != rotate.PathEST {
			t.Errorf("newKey=%v: key changed=%v path=%s", newKey, !samePublicKey(c.Signer.Public(), cur.Signer.Public()), res.Path)
		}
		if err := register(c); err != nil {
			t.Errorf("newKey=%v: DPS refuses the renewed credential: %v", newKey, err)
		}
		if err := d.connect(ctx, c); err != nil {
			t.Errorf("newKey=%v: hub refuses the renewed credential: %v", newKey, err)
		}
		cur = c
	}
}

// TestESTWithIndividualEnrollment: an individual enrollment pins the
// device's current certificate, so DPS refuses an EST-renewed one. The
// probe (register, then connect) catches it before the swap: the renewal
// fails and the device keeps the certificate that still registers.
func TestESTWithIndividualEnrollment(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	const id = "rot-est-indiv"
	ca := simtest.NewDeviceCA(t)
	caFile := filepath.Join(t.TempDir(), "device-ca.pem")
	os.WriteFile(caFile, simtest.PEM(ca.Root), 0o600)
	// The EST server accepts the device CA's certificates as clients,
	// but DPS knows this device only by its individual enrollment.
	sim := simtest.Start(t, simtest.WithArgs("--est-client-ca", caFile))
	dev := ca.Issue(t, id)
	sim.EnrollIndividual(t, id, dev.Leaf)
	b, err := os.ReadFile(sim.Ready.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := dps.ParseTrustBundle(b)
	netw := dps.Network{Resolve: sim.Resolve(), TrustBundle: bundle}
	dir := t.TempDir()
	slot := rotate.Slot{KeySpec: "file:" + filepath.Join(dir, "device.key"), ChainPath: filepath.Join(dir, "device-chain.pem")}
	os.WriteFile(filepath.Join(dir, "device.key"), dev.KeyPEM(t), 0o600)
	os.WriteFile(slot.ChainPath, dev.ChainPEM(), 0o600)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	register := func(ctx context.Context, c credential.Credential) error {
		_, err := dps.Register(ctx, dps.Config{Endpoint: sim.Ready.DPS.Host + ":8883", IDScope: sim.Ready.IDScope,
			Network: netw, Certificate: c.TLSCertificate(), Timeout: 20 * time.Second, MinPollInterval: simPoll})
		return err
	}
	rot := &rotate.Rotator{StateDir: dir, Slot: slot, DeviceID: id, Probe: register,
		Issuer: &rotate.ESTIssuer{URL: sim.Ready.ESTURL, ServerRoots: sim.ServerRoots()}}
	before, _ := os.ReadFile(slot.ChainPath)
	if _, err := rot.Rotate(ctx); !errors.Is(err, rotate.ErrProbe) {
		t.Fatalf("EST renewal under an individual enrollment: %v, want rotate.ErrProbe", err)
	}
	after, _ := os.ReadFile(slot.ChainPath)
	if string(after) != string(before) {
		t.Fatal("the certificate was swapped although DPS refuses the new one")
	}
	cur, err := rotate.LoadCredential(slot, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := register(ctx, cur); err != nil {
		t.Errorf("the kept certificate no longer registers: %v", err)
	}
}

// TestHubRenewalOnSim: the IoT Hub credentials-topic renewal (preview)
// replaces a DPS-issued operational certificate over the hub connection,
// with a new key; the renewed credential connects.
func TestHubRenewalOnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	d := newSimDevice(t, "rot-hub-1")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	first, err := d.rot.Rotate(ctx) // the first operational certificate, from DPS
	if err != nil {
		t.Fatal(err)
	}
	hr, _ := d.hubRotator("rot-hub-1")
	res, err := hr.Rotate(ctx)
	if err != nil {
		t.Fatalf("hub renewal: %v", err)
	}
	if res.Path != rotate.PathHub || res.Serial == first.Serial {
		t.Errorf("result %+v", res)
	}
	c, err := rotate.LoadCredential(d.slot, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.connect(ctx, c); err != nil {
		t.Errorf("hub-renewed credential does not connect: %v", err)
	}
}

// TestDPSIssuanceP384OnSim: the operational key spec asks for P-384
// (",curve=p384"); the first issuance and a key rotation both make P-384
// keys, DPS (the simulator accepts P-384 CSRs by default) issues for them,
// and the credential connects to the hub.
func TestDPSIssuanceP384OnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	d := newSimDevice(t, "rot-dps-384")
	d.slot.KeySpec += ",curve=p384"
	d.rot.Slot = d.slot
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var serial string
	for i := range 2 {
		res, err := d.rot.Rotate(ctx)
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if res.Serial == serial {
			t.Fatalf("rotation %d kept serial %s", i, serial)
		}
		serial = res.Serial
		c, err := rotate.LoadCredential(d.slot, d.dir)
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := c.Signer.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P384() {
			t.Fatalf("rotation %d: key is %T, want ECDSA P-384", i, c.Signer.Public())
		}
		if !pub.Equal(c.Leaf().PublicKey) {
			t.Fatalf("rotation %d: certificate does not certify the P-384 key", i)
		}
		if err := d.connect(ctx, c); err != nil {
			t.Fatalf("rotation %d: P-384 credential does not connect: %v", i, err)
		}
	}
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// TestHubRenewalReplacesALostRequest: a certificate request the device
// lost (it gave up waiting, as a reboot would) stays active on the hub,
// which answers the next request 409005 until it expires. The issuer
// replaces it ("replace": "*") and gets its certificate at once. Before,
// the 409 failed the renewal and the next attempt waited for the rotation
// timer.
func TestHubRenewalReplacesALostRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	d := newSimDevice(t, "rot-hub-lost")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := d.rot.Rotate(ctx); err != nil { // the first operational certificate, from DPS
		t.Fatal(err)
	}
	hr, dev := d.hubRotator("rot-hub-lost")
	// The hub holds its answer; the device gives up after 3 s.
	d.sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: dev, Ops: []string{"credentials"}, DelayMs: 60_000})
	lost, stop := context.WithTimeout(ctx, 3*time.Second)
	_, err := hr.Rotate(lost)
	stop()
	if err == nil {
		t.Fatal("a renewal whose answer was held succeeded")
	}
	d.sim.ClearFaults(t)
	res, err := hr.Rotate(ctx)
	if err != nil {
		t.Fatalf("renewal after a lost request: %v", err)
	}
	if res.Path != rotate.PathHub {
		t.Errorf("result %+v, want path hub", res)
	}
}

// hubRotator renews the device's operational certificate through the hub
// it was assigned to (HubIssuer); it returns the hub's device ID too.
func (d *simDevice) hubRotator(id string) (*rotate.Rotator, string) {
	d.mu.Lock()
	hub, dev := d.hub, d.dev
	d.mu.Unlock()
	return &rotate.Rotator{StateDir: d.dir, Slot: d.slot, DeviceID: id, NewKey: true, Probe: d.connect,
		Issuer: &HubIssuer{Config: dps.HubConfig{Host: hub, DeviceID: dev, Network: d.net, ConnectTimeout: 15 * time.Second}}}, dev
}
