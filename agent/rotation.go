package agent

// Credential renewal (issue 8): wires devid/enroll/rotate into the agent
// through the extension hooks. docs/rotation.md explains the policy,
// the issuance paths and the two-phase commit.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
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
	"devid/enroll/keys"
	"devid/enroll/rotate"
	"devid/hal/clock"
)

// Operational slot file names (path "dps"): the DPS-issued credential the
// hub sees. The factory key and chain stay the onboarding credential.
const (
	OperationalKeyFile   = "operational.key"
	OperationalBlobFile  = "operational.tpmkey"
	OperationalChainFile = "operational-chain.pem"
)

// RotateCrashEnv names a rotation step after which the agent kills
// itself (SIGKILL), for power-cut tests. It is honoured only with
// debug.allow_clock_override, the agent's test-only switch.
const RotateCrashEnv = "DEVID_ROTATE_CRASH_AT"

// renewal is the agent's side of credential renewal.
type renewal struct {
	a     *Agent
	cloud Cloud // the agent's, unwrapped: the probe's refusals are not the live session's
	w     *rotate.Renewer
	slot  rotate.Slot
	path  string

	mu       sync.Mutex
	assigned *statedir.Assignment // from the last DPS issuance, for the probe

	nudged string // operational fingerprint last asked to reload (state goroutine only)
}

// ensureDeviceID sets the Rotator's device ID once. Every path that
// rotates calls it first, so the mutex orders the one write before any
// rotation reads the field.
func (r *renewal) ensureDeviceID(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w.Rotator.DeviceID == "" {
		r.w.Rotator.DeviceID = id
	}
}

// onTransition runs on the agent's state goroutine (a.id is safe to read).
func (r *renewal) onTransition(_, to State, _ Event) {
	if to != Connected || r.a.id == nil {
		return
	}
	c, err := rotate.LoadCredential(r.slot, r.a.dir.Path)
	if err != nil {
		return
	}
	closeKeyOf(c.Signer)
	sum := sha256.Sum256(c.Leaf().Raw)
	fp := hex.EncodeToString(sum[:])
	if op := r.a.id.Operational; (op != nil && op.Fingerprint == fp) || r.nudged == fp {
		return
	}
	r.nudged = fp
	r.a.log.Info("renewal: connected without the installed operational certificate; reloading", "fingerprint", fp)
	go r.a.CredentialChanged()
}

func closeKeyOf(k any) {
	if c, ok := k.(interface{ Close() error }); ok {
		c.Close()
	}
}

// initRenewal sets up the renewal loop, the rotateCredential direct
// method, the "renewal" desired property and the status section. With
// path "none" only the status section is there (it says nothing renews
// the credential).
func (a *Agent) initRenewal() error {
	c := a.cfg.Renewal
	if step := os.Getenv(RotateCrashEnv); step != "" && a.cfg.Debug.AllowClockOverride {
		// Fault injection for the end-to-end tests: a power cut right
		// after the named rotation step.
		a.log.Warn("rotation fault injection active", "env", RotateCrashEnv, "step", step)
		rotate.SetStepHook(func(s string) {
			if s == step {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		})
	}
	pol, err := rotate.PolicyFromFields(c.RenewAt, c.Jitter, c.Retry, c.Margin)
	if err != nil {
		return fmt.Errorf("renewal: %w", err)
	}
	stateDir := a.dir.Path
	r := &renewal{a: a, path: c.Path, cloud: a.opt.Cloud}
	r.slot = rotate.Slot{KeySpec: a.cfg.Key.Backend, ChainPath: certstore.Open(stateDir, nil).Path()}
	rot := &rotate.Rotator{
		StateDir: stateDir, Slot: r.slot, NewKey: c.RotateKey, Now: a.clock.Now,
		Log: a.log.With("component", "renewal"), Probe: r.probe,
	}
	switch c.Path {
	case "dps", "hub":
		spec, err := operationalKeySpec(a.cfg.Key.Backend, stateDir, c.KeyCurve)
		if err != nil {
			return fmt.Errorf("renewal: %w", err)
		}
		r.slot = rotate.Slot{KeySpec: spec, ChainPath: filepath.Join(stateDir, OperationalChainFile)}
		rot.Slot = r.slot
		// The DPS config is built per attempt (issueDPS): the onboarding
		// identity exists only once the device is enrolled.
		rot.Issuer = rotate.IssuerFunc{Path: rotate.PathDPS, Fn: r.issueDPS}
		if c.Path == "hub" {
			// Renewals go over the hub connection; the first operational
			// certificate and every registration still come from DPS.
			rot.Issuer = rotate.IssuerFunc{Path: rotate.PathHub, Fn: r.issueHub}
		}
		// The hub sees the operational credential once there is one.
		a.opt.Identity = operationalIdentity{inner: a.opt.Identity, slot: r.slot, stateDir: stateDir}
		// Every DPS registration carries a CSR, so re-provisioning (a hub
		// refusing a revoked or expired operational certificate, a moved
		// device) also renews the operational credential.
		a.opt.Cloud = authWatch{Cloud: a.opt.Cloud, r: r}
		// A rotation that committed while the agent could not take the
		// new credential (say, mid-provisioning at boot) is picked up at
		// the next connection: connected with anything but the installed
		// operational credential -> reload, once per certificate.
		a.transitionHooks = append(a.transitionHooks, r.onTransition)
	case "est":
		rot.Issuer = &rotate.ESTIssuer{URL: c.ESTURL, ServerRoots: r.estRoots(), Transport: r.estTransport}
	}
	r.w = &rotate.Renewer{Rotator: rot, Policy: pol, Clock: a.clock, OnRotated: r.onRotated, Log: rot.Log,
		// With path dps the agent's own registration fills the empty slot.
		FirstIssuanceElsewhere: c.Path == "dps" || c.Path == "hub"}
	a.statusExtra["renewal"] = func() any { return r.w.Status() }
	if c.Path == "none" || c.Path == "" {
		if leaf := renewalLeaf(a.cfg); leaf != nil {
			// Say it at every start, not only in check (docs/field-problems.md, row 3).
			a.log.Warn("renewal.path is none: nothing will renew the device certificate", "not_after", leaf.NotAfter.UTC())
		}
		return nil
	}
	a.extraMethods[rotate.MethodName] = func(_ context.Context, payload []byte) (int, []byte) {
		return r.w.HandleMethod(payload)
	}
	a.desiredHooks = append(a.desiredHooks, r.onDesired)
	a.background = append(a.background, func(ctx context.Context) {
		if err := r.waitEnrolled(ctx); err != nil {
			return
		}
		_ = r.w.Run(ctx)
	})
	return nil
}

// waitEnrolled holds the renewal loop back until the device has its
// factory identity (a device in the factory has nothing to renew).
func (r *renewal) waitEnrolled(ctx context.Context) error {
	for {
		if id, err := r.a.opt.Identity.Load(); err == nil {
			// The CSR's CN (the registration ID) is the factory identity's.
			r.ensureDeviceID(id.DeviceID)
			closeIdentity(id)
			return nil
		}
		if err := clock.Sleep(ctx, r.a.clock, 30*time.Second); err != nil {
			return err
		}
	}
}

// onboarding is the factory identity (DPS always sees it).
func (r *renewal) onboarding() (*Identity, error) {
	id, err := r.a.opt.Identity.Load()
	if err != nil {
		return nil, err
	}
	if id.Operational != nil {
		closeIdentity(id.Operational)
	}
	return &Identity{DeviceID: id.DeviceID, Key: id.Key, Backend: id.Backend, Chain: id.Chain, Fingerprint: id.Fingerprint}, nil
}

// closeIdentity releases keys that hold a resource (TPM objects: only a
// few can be loaded at once).
func closeIdentity(id *Identity) {
	for _, x := range []*Identity{id, id.Operational} {
		if x == nil {
			continue
		}
		if c, ok := x.Key.(interface{ Close() error }); ok {
			c.Close()
		}
	}
}

// issueDPS is path a): register with the onboarding credential and a CSR.
func (r *renewal) issueDPS(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	id, err := r.onboarding()
	if err != nil {
		return nil, fmt.Errorf("onboarding credential: %w", err)
	}
	defer closeIdentity(id)
	r.a.log.Info("renewal: DPS certificate issuance", "registration_id", id.DeviceID)
	cfg := r.a.cfg
	d := &rotate.DPSIssuer{
		Config: dps.Config{
			Endpoint: cfg.DPS.Endpoint, IDScope: cfg.DPS.IDScope, Credential: credential(id),
			Network: r.network(), Timeout: cfg.DPS.Timeout.D(), Payload: payloadOf(cfg.DPS.Payload),
			Now: r.a.clock.Now, Sleep: sleepOn(r.a.clock), Logger: r.a.log.With("component", "dps"),
		},
		OnAssigned: r.onAssigned,
	}
	req.RegistrationID = id.DeviceID
	return d.Issue(ctx, req)
}

// registering marks the context of authWatch.Register: a registration
// always issues through DPS, whatever renewal.path says.
type registering struct{}

// issueHub is path "hub": renew over the hub's credentials topic
// (docs/dps.md, certificate renewal, preview), authenticated with the current operational
// certificate. Without one (first issuance), during a registration, or
// when the hub cannot issue (no preview support, a transient failure),
// it issues through DPS, which needs only the factory credential.
func (r *renewal) issueHub(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	as := r.hubAssignment()
	if ctx.Value(registering{}) != nil || req.Current.Signer == nil || as == nil {
		return r.issueDPS(ctx, req)
	}
	r.a.log.Info("renewal: hub certificate issuance", "hub", as.Hub, "device_id", as.DeviceID)
	h := &rotate.HubIssuer{Config: dps.HubConfig{Host: as.Hub, DeviceID: as.DeviceID, Network: r.network(),
		KeepAlive: r.a.cfg.Hub.KeepAlive.D(), ConnectTimeout: r.a.cfg.Hub.ConnectTimeout.D(), Sleep: sleepOn(r.a.clock),
		Logger: r.a.log.With("component", "hub-renewal")}}
	chain, err := h.Issue(ctx, req)
	if err == nil || ctx.Err() != nil {
		return chain, err
	}
	r.a.log.Warn("renewal: the hub did not issue a certificate; issuing through DPS", "err", err)
	return r.issueDPS(ctx, req)
}

// hubAssignment is the hub the operational credential belongs to: the
// last DPS issuance's, else the cached assignment.
func (r *renewal) hubAssignment() *statedir.Assignment {
	r.mu.Lock()
	as := r.assigned
	r.mu.Unlock()
	if as != nil {
		return as
	}
	if as, err := r.a.dir.LoadAssignment(); err == nil && as.Hub != "" && as.DeviceID != "" {
		return as
	}
	return nil
}

func payloadOf(s string) json.RawMessage {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return json.RawMessage(s)
}

func (r *renewal) network() dps.Network {
	if c, ok := r.cloud.(interface{ Network() dps.Network }); ok {
		return c.Network()
	}
	return dps.Network{}
}

func (r *renewal) onAssigned(res *dps.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.assigned = &statedir.Assignment{Hub: res.AssignedHub, DeviceID: res.DeviceID, RegistrationID: res.DeviceID}
}

// probe proves a candidate credential: it connects to the hub with it and
// disconnects. With path est the candidate first registers with DPS, as
// the agent does after any certificate change (the hub learns the new
// credential through DPS).
func (r *renewal) probe(ctx context.Context, c rotate.Credential) error {
	leaf := c.Leaf()
	sum := sha256.Sum256(leaf.Raw)
	cand := &Identity{DeviceID: leaf.Subject.CommonName, Key: c.Signer, Chain: c.Chain, Fingerprint: hex.EncodeToString(sum[:])}
	var as *statedir.Assignment
	if r.path == "dps" || r.path == "hub" {
		as = r.hubAssignment()
	} else {
		var err error
		if as, err = r.cloud.Register(ctx, cand); err != nil {
			return fmt.Errorf("register with the new certificate: %w", err)
		}
	}
	if as == nil {
		return errors.New("no hub assignment to probe")
	}
	conn, err := r.cloud.Connect(ctx, cand, as, Handlers{})
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// onRotated reloads the identity and reconnects with the new credential.
func (r *renewal) onRotated(res rotate.Result) {
	r.a.log.Info("credential rotated", "path", res.Path, "serial", res.Serial, "not_after", res.NotAfter, "new_key", res.NewKey)
	r.a.CredentialChanged()
}

// onDesired applies the "renewal" desired property and reports the
// effective policy (or why the desired one was refused).
func (r *renewal) onDesired(patch []byte) {
	var m map[string]json.RawMessage
	if json.Unmarshal(patch, &m) != nil {
		return
	}
	raw, ok := m[rotate.DesiredProperty]
	if !ok {
		return
	}
	pol, err := r.w.HandleDesired(raw)
	rep := map[string]any{}
	if err != nil {
		r.a.log.Warn("renewal: desired policy refused", "err", err)
		rep["renewal"] = map[string]any{"error": err.Error(), "policy": r.w.Status().Policy}
	} else {
		r.a.log.Info("renewal: policy set by desired property", "policy", pol.String())
		rep["renewal"] = map[string]any{"policy": pol.String(), "error": nil}
	}
	b, _ := json.Marshal(rep)
	// Not from the hub's callback: Report waits for the hub's answer.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.a.Report(ctx, b); err != nil {
			r.a.log.Debug("renewal: report policy", "err", err)
		}
	}()
}

// estRoots verify the EST server: the DPS trust bundle when one is
// configured (a private PKI, or the simulator), else the system roots.
func (r *renewal) estRoots() *x509.CertPool {
	if r.a.cfg.DPS.TrustBundle == "" {
		return nil
	}
	b, err := os.ReadFile(r.a.cfg.DPS.TrustBundle)
	if err != nil {
		return nil
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

// estTransport applies network.resolve and network.proxy to EST.
func (r *renewal) estTransport(tc *tls.Config) http.RoundTripper {
	resolve := r.a.cfg.Network.Resolve
	d := &net.Dialer{Timeout: 30 * time.Second}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				if to, ok := resolve[host]; ok {
					addr = to
				}
			}
			return d.DialContext(ctx, network, addr)
		}}
	if p := r.a.cfg.Network.Proxy; p != "" {
		if u, err := url.Parse(p); err == nil {
			tr.Proxy = http.ProxyURL(u)
		}
	}
	return tr
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

// operationalIdentity adds the operational credential, when there is one,
// to the factory identity: the hub gets it, DPS keeps the factory one.
type operationalIdentity struct {
	inner    IdentitySource
	slot     rotate.Slot
	stateDir string
}

func (o operationalIdentity) Load() (*Identity, error) {
	id, err := o.inner.Load()
	if err != nil {
		return nil, err
	}
	c, err := rotate.LoadCredential(o.slot, o.stateDir)
	if err != nil {
		return id, nil // no operational certificate yet: the hub gets the factory one
	}
	leaf := c.Leaf()
	sum := sha256.Sum256(leaf.Raw)
	backend := ""
	if k, ok := c.Signer.(keys.Key); ok {
		backend = k.Backend()
	}
	id.Operational = &Identity{DeviceID: leaf.Subject.CommonName, Key: c.Signer, Backend: backend, Chain: c.Chain,
		Fingerprint: hex.EncodeToString(sum[:])}
	return id, nil
}

// authWatch passes everything to the agent's Cloud except Register (see
// there): the hub then never sees a registration that strands the
// operational credential.
type authWatch struct {
	Cloud
	r *renewal
}

// Register, with path dps, registers with a CSR: DPS issues a new
// operational certificate with every registration (and points the hub
// device at it), so a registration without one would strand the
// installed operational certificate. The issued chain goes through the
// two-phase commit like any rotation, and the identity the agent is
// about to connect with gets the new operational credential.
func (w authWatch) Register(ctx context.Context, id *Identity) (*statedir.Assignment, error) {
	w.r.ensureDeviceID(id.DeviceID)
	res, err := w.r.w.RotateSync(context.WithValue(ctx, registering{}, true), false, "registration")
	if err != nil {
		if errors.Is(err, rotate.ErrProbe) {
			// DPS accepted us; the hub refusing the brand-new certificate
			// is not a verdict on the device: retry, do not revoke.
			return nil, fmt.Errorf("register with certificate issuance: %v", err)
		}
		return nil, fmt.Errorf("register with certificate issuance: %w", err)
	}
	w.r.mu.Lock()
	as := w.r.assigned
	w.r.mu.Unlock()
	if as == nil {
		return nil, errors.New("register with certificate issuance: no assignment recorded")
	}
	c, err := rotate.LoadCredential(w.r.slot, w.r.a.dir.Path)
	if err != nil {
		return nil, fmt.Errorf("load the issued credential: %w", err)
	}
	leaf := c.Leaf()
	sum := sha256.Sum256(leaf.Raw)
	if id.Operational != nil {
		closeIdentity(id.Operational)
	}
	id.Operational = &Identity{DeviceID: leaf.Subject.CommonName, Key: c.Signer, Chain: c.Chain, Fingerprint: hex.EncodeToString(sum[:])}
	w.r.a.log.Info("registered with DPS certificate issuance", "serial", res.Serial, "hub", as.Hub)
	cp := *as
	return &cp, nil
}

// renewalPath maps config's renewal.path to the recorded issuance path.
func renewalPath(p string) string {
	switch p {
	case "dps":
		return rotate.PathDPS
	case "hub":
		return rotate.PathHub
	case "est":
		return rotate.PathEST
	}
	return rotate.PathNone
}

// renewalLeaf is the certificate renewal applies to: the operational one
// with path dps (when issued), else the device certificate.
func renewalLeaf(cfg *config.Config) *x509.Certificate {
	files := []string{certstore.Open(cfg.StateDir, nil).Path()}
	if cfg.Renewal.Path == "dps" || cfg.Renewal.Path == "hub" {
		files = append([]string{filepath.Join(cfg.StateDir, OperationalChainFile)}, files...)
	}
	for _, f := range files {
		if raw, err := os.ReadFile(f); err == nil {
			if certs, err := certstore.ParsePEM(raw); err == nil {
				return certs[0]
			}
		}
	}
	return nil
}

// RenewalStatusFromFiles is the renewal section of `devid-agent status`
// when the agent does not answer: config, renewal.json and the chain.
func RenewalStatusFromFiles(cfg *config.Config, now time.Time) rotate.Status {
	pol, err := rotate.PolicyFromFields(cfg.Renewal.RenewAt, cfg.Renewal.Jitter, cfg.Renewal.Retry, cfg.Renewal.Margin)
	if err != nil {
		pol = rotate.DefaultPolicy()
	}
	rec, _ := rotate.LoadRecord(cfg.StateDir)
	if rec.Policy != nil {
		pol = *rec.Policy
	}
	st := rotate.Status{Path: renewalPath(cfg.Renewal.Path), Policy: pol.String(), LastSuccess: rec.LastSuccess,
		LastFailure: rec.LastFailure, LastError: rec.LastError, Failures: rec.Failures, Rotations: rec.Rotations}
	if leaf := renewalLeaf(cfg); leaf != nil {
		st.NotAfter = leaf.NotAfter
		if st.Path != rotate.PathNone {
			pl := pol.Next(now, leaf, rec.LastFailure)
			st.Next, st.Reason = pl.At, pl.Reason
		}
	}
	return st
}

// RenewalCheck is the `devid-agent check` line about renewal: it warns
// when no issuance path can renew the certificate, and when renewals fail.
func RenewalCheck(cfg *config.Config, now time.Time) rotate.CheckResult {
	pol, err := rotate.PolicyFromFields(cfg.Renewal.RenewAt, cfg.Renewal.Jitter, cfg.Renewal.Retry, cfg.Renewal.Margin)
	if err != nil {
		return rotate.CheckResult{Level: rotate.CheckFail, Message: err.Error(), Hint: "fix [renewal] in the config (docs/rotation.md)"}
	}
	rec, _ := rotate.LoadRecord(cfg.StateDir)
	if rec.Policy != nil {
		pol = *rec.Policy
	}
	return rotate.CheckRenewal(renewalPath(cfg.Renewal.Path), renewalLeaf(cfg), pol, rec, now)
}
