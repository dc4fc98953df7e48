// Package renewal renews the device credential while the agent runs:
// the policy loop, the rotateCredential direct method, the "renewal"
// desired property, the status section, and registration with DPS
// certificate issuance. docs/rotation.md explains the policy, the
// issuance paths and the two-phase commit (devid/enroll/rotate).
//
// The agent builds one Renewal with New and composes it explicitly. Calls
// go one way: the agent calls in; the renewal calls only what New was
// given (the identity source, the register and connect functions) and
// tells the agent about a committed rotation on the Rotated channel.
package renewal

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/certstore"
	"devid/enroll/credential"
	"devid/enroll/keys"
	"devid/enroll/rotate"
	"devid/hal/clock"
)

// Operational slot file names (paths "dps" and "hub"): the DPS-issued
// credential the hub sees. The factory key and chain stay the onboarding
// credential.
const (
	OperationalKeyFile   = "operational.key"
	OperationalBlobFile  = "operational.tpmkey"
	OperationalChainFile = "operational-chain.pem"
)

// RotateCrashEnv names a rotation step after which the agent kills
// itself (SIGKILL), for power-cut tests. It is honoured only with
// debug.allow_clock_override, the agent's test-only switch.
const RotateCrashEnv = "DEVID_ROTATE_CRASH_AT"

// IdentitySource loads the device's factory (onboarding) credential; the
// agent's identity source is one.
type IdentitySource interface {
	Load() (*credential.Credential, error)
}

// Deps are a Renewal's inputs.
type Deps struct {
	// Config is the agent's config: [renewal], and [key], [dps], [hub]
	// and [network] for the issuance paths.
	Config *config.Config
	// Dir is the state directory: the credentials, the cached
	// assignment, the journal and renewal.json.
	Dir *statedir.Dir
	// Identity is the factory credential: the CSR's CN comes from it, and
	// DPS always sees it.
	Identity IdentitySource
	// Register registers a credential with DPS as the agent does (path
	// est: a renewed certificate is registered before it is used).
	Register func(ctx context.Context, cred *credential.Credential) (*statedir.Assignment, error)
	// Connect connects to the hub with a credential and disconnects: the
	// probe that proves a new credential before it is swapped in.
	Connect func(ctx context.Context, cred *credential.Credential, as *statedir.Assignment) error
	// Refused says whether a Connect error is a verdict on the credential:
	// the hub refused it (authentication) or it cannot be used at all
	// (configuration). Other errors (the hub down, unreachable, busy) are
	// not. Nil means dps.ErrNotAuthorized or dps.ErrConfig.
	Refused func(error) bool
	// Network is how the issuers reach DPS and the hub.
	Network dps.Network
	Clock   clock.Clock
	Logger  *slog.Logger
}

// Renewal renews one credential slot: the device credential (path est),
// or the operational one beside it (paths dps and hub).
type Renewal struct {
	cfg        *config.Config
	dir        *statedir.Dir
	stateDir   string
	configured string // renewal.path as configured
	identity   IdentitySource
	register   func(context.Context, *credential.Credential) (*statedir.Assignment, error)
	connect    func(context.Context, *credential.Credential, *statedir.Assignment) error
	refused    func(error) bool
	network    dps.Network
	clock      clock.Clock
	log        *slog.Logger

	w *rotate.Renewer
	// viaDPS issues through DPS whatever the path (a registration).
	viaDPS  rotate.Issuer
	rotated chan struct{}
	// decided is closed once path auto has decided (at once for any
	// other path).
	decided chan struct{}

	mu       sync.Mutex
	path     string               // the path in force; "" while auto is undecided
	why      string               // why path is in force (auto), for status
	slot     rotate.Slot          // the slot path renews
	assigned *statedir.Assignment // from the last DPS issuance, for the probe

	nudged string // operational fingerprint last asked to reload (Stale's caller only)
}

// New sets up the renewal of the credential that renewal.path names.
// With path "none" only Status works (it says nothing renews the
// credential). New starts nothing: Run does.
func New(d Deps) (*Renewal, error) {
	c := d.Config.Renewal
	if d.Clock == nil {
		d.Clock = clock.System
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Refused == nil {
		d.Refused = func(err error) bool { return errors.Is(err, dps.ErrNotAuthorized) || errors.Is(err, dps.ErrConfig) }
	}
	pol, err := rotate.PolicyFromFields(c.RenewAt, c.Jitter, c.Retry, c.Margin)
	if err != nil {
		return nil, fmt.Errorf("renewal: %w", err)
	}
	r := &Renewal{cfg: d.Config, dir: d.Dir, stateDir: d.Dir.Path, configured: c.Path, identity: d.Identity,
		register: d.Register, connect: d.Connect, refused: d.Refused, network: d.Network, clock: d.Clock, log: d.Logger,
		rotated: make(chan struct{}, 1), decided: make(chan struct{})}
	rot := &rotate.Rotator{
		StateDir: r.stateDir, NewKey: c.RotateKey, Now: d.Clock.Now,
		Log: d.Logger.With("component", "renewal"), Probe: r.probe,
	}
	if step := os.Getenv(RotateCrashEnv); step != "" && d.Config.Debug.AllowClockOverride {
		// Fault injection for the end-to-end tests: a power cut right
		// after the named rotation step.
		r.log.Warn("rotation fault injection active", "env", RotateCrashEnv, "step", step)
		rot.Step = func(s string) {
			if s == step {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	r.w = &rotate.Renewer{Rotator: rot, Policy: pol, Clock: d.Clock, OnRotated: r.onRotated, Log: rot.Log}
	// Registrations issue through DPS into the operational slot (paths
	// dps and hub, and auto finding out whether DPS issues).
	r.viaDPS = &pathIssuer{r: r, path: rotate.PathDPS, dpsOnly: true}
	path, why := effectivePath(d.Config)
	if err := r.setPath(path, why); err != nil {
		return nil, err
	}
	switch {
	case c.Path != "auto":
	case path != "":
		r.log.Info("renewal: path auto", "path", path, "why", why)
	case d.Config.DPS.IDScope == "":
		// No DPS to ask (a hub-only config): nothing will answer.
		r.decideWithoutDPS("dps.id_scope is not set, so DPS cannot be asked whether it issues certificates")
		path = r.pathInForce()
	default:
		r.log.Info("renewal: path auto decides at the first DPS registration, which carries a CSR")
	}
	if path == "none" {
		if leaf := renewalLeaf(d.Config); leaf != nil {
			// Say it at every start, not only in check (docs/field-problems.md, row 3).
			r.log.Warn("renewal.path is none: nothing will renew the device certificate", "not_after", leaf.NotAfter.UTC())
		}
	}
	return r, nil
}

// setPath sets the renewal up for path ("" while auto is undecided: the
// operational slot of path dps, and no loop), and opens Run's gate once
// decided.
func (r *Renewal) setPath(path, why string) error {
	slot := rotate.Slot{KeySpec: r.cfg.Key.Backend, ChainPath: certstore.Open(r.stateDir, nil).Path()}
	var iss rotate.Issuer
	switch path {
	case "dps", "hub", "":
		spec, err := operationalKeySpec(r.cfg.Key.Backend, r.stateDir, r.cfg.Renewal.KeyCurve)
		if err != nil {
			return fmt.Errorf("renewal: %w", err)
		}
		slot = rotate.Slot{KeySpec: spec, ChainPath: filepath.Join(r.stateDir, OperationalChainFile)}
		if path != "" {
			// With path hub, renewals go over the hub connection; the
			// first operational certificate and every registration still
			// come from DPS. Both record the path in force.
			iss = &pathIssuer{r: r, path: renewalPath(path)}
			r.viaDPS = &pathIssuer{r: r, path: renewalPath(path), dpsOnly: true}
		}
	case "est":
		iss = &rotate.ESTIssuer{URL: r.cfg.Renewal.ESTURL, ServerRoots: r.estRoots(), Transport: r.estTransport}
	}
	// With paths dps and hub the agent's own registration fills the
	// empty slot.
	r.w.Reconfigure(iss, slot, path == "dps" || path == "hub" || path == "")
	r.mu.Lock()
	r.path, r.why, r.slot = path, why, slot
	r.mu.Unlock()
	if path != "" {
		close(r.decided)
	}
	return nil
}

// pathInForce is the path in force ("" while auto is undecided).
func (r *Renewal) pathInForce() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.path
}

// PathName is the path in force as renewal.path names it: "dps", "hub",
// "est" or "none", or "auto" while auto has not decided.
func (r *Renewal) PathName() string {
	if p := r.pathInForce(); p != "" {
		return p
	}
	return "auto"
}

// active says whether an issuance path is in force.
func (r *Renewal) active() bool {
	p := r.pathInForce()
	return p != "none" && p != ""
}

// IssuesAtRegistration says whether every DPS registration must go
// through Register (paths dps and hub, and auto until it has decided):
// DPS issues a new operational certificate with every registration that
// carries a CSR, so a registration without one would strand the
// installed operational certificate.
func (r *Renewal) IssuesAtRegistration() bool {
	p := r.pathInForce()
	return p == "dps" || p == "hub" || p == ""
}

// Deciding says whether path auto has yet to decide: the agent then
// registers with DPS (with a CSR) even when an assignment is cached.
func (r *Renewal) Deciding() bool { return r.undecided() }

// Run runs the renewal loop until ctx ends, once the device has its
// factory identity. Without an issuance path it returns at once.
func (r *Renewal) Run(ctx context.Context) {
	select {
	case <-r.decided:
	case <-ctx.Done():
		return
	}
	if !r.active() {
		return
	}
	if err := r.waitEnrolled(ctx); err != nil {
		return
	}
	_ = r.w.Run(ctx)
}

// Rotated receives a value after each rotation that Run committed: the
// agent then reloads its identity and reconnects with the new credential.
func (r *Renewal) Rotated() <-chan struct{} { return r.rotated }

// Status is the "renewal" section of the agent's status.
func (r *Renewal) Status() rotate.Status {
	st := r.w.Status()
	if r.configured == "auto" {
		r.mu.Lock()
		st.Configured, st.Why = "auto", r.why
		if r.path == "" {
			st.Path = "auto"
		}
		r.mu.Unlock()
	}
	return st
}

// MethodNames are the direct methods Method answers.
func (r *Renewal) MethodNames() []string {
	if !r.active() {
		return nil
	}
	return []string{rotate.MethodName}
}

// Method answers a direct method; ok is false for a method that is not
// the renewal's.
func (r *Renewal) Method(name string, payload []byte) (status int, response []byte, ok bool) {
	if !r.active() || name != rotate.MethodName {
		return 0, nil, false
	}
	status, response = r.w.HandleMethod(payload)
	return status, response, true
}

// Desired applies the "renewal" desired property in a desired-properties
// patch and returns the reported-properties patch that answers it (the
// effective policy, or why the desired one was refused), or nil when the
// patch does not concern renewal.
func (r *Renewal) Desired(patch []byte) []byte {
	if !r.active() {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(patch, &m) != nil {
		return nil
	}
	raw, ok := m[rotate.DesiredProperty]
	if !ok {
		return nil
	}
	pol, err := r.w.HandleDesired(raw)
	rep := map[string]any{}
	if err != nil {
		r.log.Warn("renewal: desired policy refused", "err", err)
		rep["renewal"] = map[string]any{"error": err.Error(), "policy": r.w.Status().Policy}
	} else {
		r.log.Info("renewal: policy set by desired property", "policy", pol.String())
		rep["renewal"] = map[string]any{"policy": pol.String(), "error": nil}
	}
	b, _ := json.Marshal(rep)
	return b
}

// Operational is the installed operational credential, which the hub
// gets (paths dps and hub), or nil: then the hub gets the factory one.
// The caller closes it.
func (r *Renewal) Operational() *credential.Credential {
	if !r.IssuesAtRegistration() {
		return nil
	}
	c, err := rotate.LoadCredential(r.opSlot(), r.stateDir)
	if err != nil {
		return nil // no operational certificate yet
	}
	return &c
}

// Connected tells the renewal that the hub accepted hub (the operational
// credential; nil for the factory one): a credential committed while the
// hub could not be reached is proven now.
func (r *Renewal) Connected(hub *credential.Credential) {
	if leaf := hub.Leaf(); leaf != nil && r.IssuesAtRegistration() {
		r.w.Proven(hex.EncodeToString(leaf.SerialNumber.Bytes())) // as rotate records it
	}
}

// Stale says whether a connection made with hub (the operational
// credential, or nil for the factory one) missed the installed
// operational credential: a rotation that committed while the agent
// could not take it (say, mid-provisioning at boot). It says so once per
// installed certificate; the agent then reloads. Call it from one
// goroutine.
func (r *Renewal) Stale(hub *credential.Credential) bool {
	if !r.IssuesAtRegistration() {
		return false
	}
	c, err := rotate.LoadCredential(r.opSlot(), r.stateDir)
	if err != nil {
		return false
	}
	c.Close()
	fp := c.Fingerprint()
	if (hub != nil && hub.Fingerprint() == fp) || r.nudged == fp {
		return false
	}
	r.nudged = fp
	r.log.Info("renewal: connected without the installed operational certificate; reloading", "fingerprint", fp)
	return true
}

// Register registers with DPS with a CSR (paths dps and hub; see
// IssuesAtRegistration). The issued chain goes through the two-phase
// commit like any rotation; the agent then connects with Operational.
// A hub that cannot be reached does not undo a registration: the
// certificate is kept (see probe), so the agent retries the hub, not DPS.
func (r *Renewal) Register(ctx context.Context, id *credential.Credential) (*statedir.Assignment, error) {
	if r.undecided() {
		return r.registerAuto(ctx, id)
	}
	r.ensureDeviceID(id.DeviceID())
	res, err := r.w.RotateSync(ctx, r.viaDPS, false, "registration")
	if err != nil {
		if errors.Is(err, rotate.ErrProbe) {
			// DPS accepted us; the hub refusing the brand-new certificate
			// is not a verdict on the device: retry, do not revoke.
			return nil, fmt.Errorf("register with certificate issuance: %v", err)
		}
		return nil, fmt.Errorf("register with certificate issuance: %w", err)
	}
	return r.issuedAssignment(res)
}

// issuedAssignment is the assignment a registration that issued res
// recorded.
func (r *Renewal) issuedAssignment(res rotate.Result) (*statedir.Assignment, error) {
	r.mu.Lock()
	as := r.assigned
	r.mu.Unlock()
	if as == nil {
		return nil, errors.New("register with certificate issuance: no assignment recorded")
	}
	if res.Unproven {
		r.log.Warn("registered with DPS certificate issuance; the hub could not be reached to try the certificate, which is kept: the agent connects with it when the hub is back",
			"serial", res.Serial, "hub", as.Hub)
	} else {
		r.log.Info("registered with DPS certificate issuance", "serial", res.Serial, "hub", as.Hub)
	}
	cp := *as
	return &cp, nil
}

// opSlot is the slot of the operational credential.
func (r *Renewal) opSlot() rotate.Slot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slot
}

// ensureDeviceID sets the Rotator's device ID once. Every path that
// rotates calls it first, so the mutex orders the one write before any
// rotation reads the field.
func (r *Renewal) ensureDeviceID(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w.Rotator.DeviceID == "" {
		r.w.Rotator.DeviceID = id
	}
}

// waitEnrolled holds the renewal loop back until the device has its
// factory identity (a device in the factory has nothing to renew).
func (r *Renewal) waitEnrolled(ctx context.Context) error {
	for {
		if id, err := r.identity.Load(); err == nil {
			// The CSR's CN (the registration ID) is the factory identity's.
			r.ensureDeviceID(id.DeviceID())
			id.Close()
			return nil
		}
		if err := clock.Sleep(ctx, r.clock, 30*time.Second); err != nil {
			return err
		}
	}
}

// onRotated tells the agent, which reloads the identity and reconnects
// with the new credential.
func (r *Renewal) onRotated(res rotate.Result) {
	r.log.Info("credential rotated", "path", res.Path, "serial", res.Serial, "not_after", res.NotAfter, "new_key", res.NewKey)
	select {
	case r.rotated <- struct{}{}:
	default: // a reload is pending already: it takes this one too
	}
}

// probe proves a candidate credential: it connects to the hub with it and
// disconnects. With path est the candidate first registers with DPS, as
// the agent does after any certificate change (the hub learns the new
// credential through DPS).
//
// With paths dps and hub, only the hub refusing the candidate rejects it.
// A hub that cannot be reached says nothing about it, and the issuance
// has already made it the certificate the hub expects (DPS points the hub
// device at the latest registration's certificate): discarding it would
// only send the agent back to DPS for another one on every retry (issue
// 18). So the probe says rotate.ErrNotReached and the candidate is
// committed; should the hub refuse it later, the agent re-provisions with
// the factory credential, which no rotation touches.
func (r *Renewal) probe(ctx context.Context, cand credential.Credential) error {
	var as *statedir.Assignment
	if r.IssuesAtRegistration() {
		as = r.hubAssignment()
	} else {
		var err error
		if as, err = r.register(ctx, &cand); err != nil {
			return fmt.Errorf("register with the new certificate: %w", err)
		}
	}
	if as == nil {
		return errors.New("no hub assignment to probe")
	}
	err := r.connect(ctx, &cand, as)
	if err == nil || !r.IssuesAtRegistration() || r.refused(err) {
		return err
	}
	return fmt.Errorf("%w: %w", rotate.ErrNotReached, err)
}

// hubAssignment is the hub the operational credential belongs to: the
// last DPS issuance's, else the cached assignment.
func (r *Renewal) hubAssignment() *statedir.Assignment {
	r.mu.Lock()
	as := r.assigned
	r.mu.Unlock()
	if as != nil {
		return as
	}
	if as, err := r.dir.LoadAssignment(); err == nil && as.Hub != "" && as.DeviceID != "" {
		return as
	}
	return nil
}

// operationalKeySpec puts the operational key beside the factory key, in
// the same backend (the same TPM when the factory key is in one). curve
// (renewal.key_curve, "P-256" or "P-384") becomes the spec's ",curve="
// option, which the rotator keeps on the staged key: every key made for
// the slot is on that curve, and a key already there loads whatever its
// curve.
func operationalKeySpec(deviceSpec, stateDir, curve string) (string, error) {
	opt, err := keys.CurveOption(curve)
	if err != nil {
		return "", fmt.Errorf("renewal.key_curve: %w", err)
	}
	st, err := keys.Open(deviceSpec, stateDir)
	if err != nil {
		return "", err
	}
	switch st.Name() {
	case "file":
		return "file:" + filepath.Join(stateDir, OperationalKeyFile) + opt, nil
	case "tpm":
		addr := ""
		if scheme, arg, _ := strings.Cut(deviceSpec, ":"); scheme == "tpm" {
			addr, _, _ = strings.Cut(arg, ",")
		}
		return "tpm:" + addr + ",blob=" + filepath.Join(stateDir, OperationalBlobFile) + opt, nil
	}
	return "", fmt.Errorf("key backend %s cannot hold an operational key", st.Name())
}
