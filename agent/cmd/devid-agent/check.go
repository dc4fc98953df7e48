package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"devid/agent"
	"devid/agent/config"
	"devid/agent/renewal"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/certstore"
	"devid/enroll/credential"
	"devid/enroll/keys"
	"devid/hal/clock"
	"devid/hal/cmdline"
)

// checkResult is one line of `devid-agent check`. ID is stable (for
// --skip and --only, and for scripts); Name is its words.
type checkResult struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Result string `json:"result"` // pass, warn, fail, skip
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// checkIDs are the checks in the order they run, by stable ID.
var checkIDs = []struct{ id, name string }{
	{"config", "config"},
	{"agent-running", "agent running"},
	{"state-dir", "state dir"},
	{"key", "key"},
	{"cert", "certificate"},
	{"key-cert-match", "key matches cert"},
	{"chain", "chain"},
	{"cert-expiry", "cert expiry"},
	{"renewal", "renewal"},
	{"clock", "clock"},
	{"trust-roots", "trust roots"},
	{"dps-assignment", "dps assignment"},
	{"queue", "queue"},
	{"set-aside", "set-aside files"},
	{"dps-reachable", "dps reachable"},
	{"hub-reachable", "hub reachable"},
}

// checkOpts are the check command's flags and seams.
type checkOpts struct {
	cfgPath    string
	asJSON     bool
	offline    bool
	skip, only string   // comma-separated check IDs
	dial       dialFunc // nil: the local API socket
}

type checker struct {
	cfg     *config.Config
	results []checkResult
	key     keys.Key
	chain   *certstore.Chain
	roots   []*x509.Certificate
	now     time.Time
	// synced is the kernel's NTP state (nil: clockSynced).
	synced func() bool
	// want is the set of checks to run and report (--skip, --only).
	want map[string]bool
	// live is the running agent's status, when it answered.
	live *agent.Status
	// noCred says why there is no key or certificate to probe with (""
	// while keyAndCert has not said): missing is not the same as
	// unreadable.
	noCred string
}

// add records the result of check id (one of checkIDs) if it is wanted.
func (c *checker) add(id, result, detail, hint string) {
	name := ""
	for _, ci := range checkIDs {
		if ci.id == id {
			name = ci.name
		}
	}
	if name == "" {
		panic("check: unknown check ID " + id) // a typo here would silently drop a result
	}
	if c.want != nil && !c.want[id] { // nil: every check
		return
	}
	c.results = append(c.results, checkResult{id, name, result, detail, hint})
}

func checkFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	o := bindCheck(fs)
	return func(ctx context.Context, _ []string) error { return runCheck(ctx, os.Stdout, *o) }
}

// bindCheck defines the check command's flags on fs.
func bindCheck(fs *flag.FlagSet) *checkOpts {
	o := &checkOpts{}
	fs.StringVar(&o.cfgPath, "config", config.DefaultPath, "config `FILE` (TOML)")
	fs.BoolVar(&o.asJSON, "json", false, "print JSON")
	fs.BoolVar(&o.offline, "offline", false, "skip the DPS and hub reachability checks (same as --skip dps-reachable,hub-reachable)")
	fs.StringVar(&o.skip, "skip", "", "do not run the checks with these `IDs` (comma-separated: "+allCheckIDs()+")")
	fs.StringVar(&o.only, "only", "", "run only the checks with these `IDs` (comma-separated)")
	return o
}

// checkExitHelp documents the exit status of check (help and man page).
const checkExitHelp = "0 every check passed (warnings allowed); 1 a check failed; 2 a usage error (such as an unknown check ID)."

func allCheckIDs() string {
	ids := make([]string, len(checkIDs))
	for i, ci := range checkIDs {
		ids[i] = ci.id
	}
	return strings.Join(ids, ", ")
}

// wantedChecks turns --only and --skip into the set of checks to run.
func wantedChecks(o checkOpts) (map[string]bool, error) {
	known := map[string]bool{}
	for _, ci := range checkIDs {
		known[ci.id] = true
	}
	parse := func(flagName, v string) ([]string, error) {
		var ids []string
		for _, id := range strings.Split(v, ",") {
			if id = strings.TrimSpace(id); id == "" {
				continue
			}
			if !known[id] {
				return nil, cmdline.Usagef("--%s: unknown check %q (checks: %s)", flagName, id, allCheckIDs())
			}
			ids = append(ids, id)
		}
		return ids, nil
	}
	only, err := parse("only", o.only)
	if err != nil {
		return nil, err
	}
	skip, err := parse("skip", o.skip)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for id := range known {
		want[id] = len(only) == 0
	}
	for _, id := range only {
		want[id] = true
	}
	for _, id := range skip {
		want[id] = false
	}
	if o.offline {
		want["dps-reachable"], want["hub-reachable"] = false, false
	}
	return want, nil
}

func runCheck(ctx context.Context, w io.Writer, o checkOpts) error {
	want, err := wantedChecks(o)
	if err != nil {
		return err
	}
	c := &checker{now: time.Now(), want: want}
	cfg, degraded, err := loadConfigOrLKG(o.cfgPath)
	if err != nil {
		hint := "run `devid-agent config check --config " + o.cfgPath + "` and fix each field it names"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run as root (or as a user that may read " + o.cfgPath + ")"
		}
		c.add("config", "fail", err.Error(), hint)
	} else {
		c.cfg = cfg
		resolveKeySpec(cfg)
		if degraded != "" {
			c.add("config", "warn", degraded, "fix the file (devid-agent config check --config "+o.cfgPath+"); the checks below use the last-known-good config")
		} else {
			c.add("config", "pass", o.cfgPath+" is valid", "")
		}
		if c.want["agent-running"] || c.want["set-aside"] {
			c.agentRunning(ctx, o.dial)
		}
		c.stateDir()
		c.keyAndCert()
		c.clock()
		c.trust()
		c.assignment()
		c.queue()
		c.setAside()
		c.reach(ctx)
	}
	failed := 0
	for _, r := range c.results {
		if r.Result == "fail" {
			failed++
		}
	}
	if o.asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(c.results)
	} else {
		for _, r := range c.results {
			fmt.Fprintf(w, "[%s] %-16s %s\n", strings.ToUpper(r.Result), r.ID, r.Detail)
			if r.Hint != "" && r.Result != "pass" {
				fmt.Fprintf(w, "       %-16s hint: %s\n", "", r.Hint)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

// agentRunning asks the agent over the local API, as status does: the
// agent runs when it answers there.
func (c *checker) agentRunning(ctx context.Context, dial dialFunc) {
	p := askAgent(ctx, c.cfg, dial)
	switch p.live {
	case agentRunning:
		c.live = p.status
		c.add("agent-running", "pass", fmt.Sprintf("answers on %s (state %s, up %s)", p.socket, p.status.State, p.status.Uptime), "")
	case agentNotRunning:
		c.add("agent-running", "fail", "not running: "+p.err.Error(), "start it (systemctl start devid-agent); journalctl -u devid-agent says why it stopped")
	case agentNotAnswering:
		c.add("agent-running", "fail", "not answering: "+p.err.Error(), "see systemctl status devid-agent and its log; the systemd watchdog restarts an agent whose state loop hangs")
	case agentDenied:
		c.add("agent-running", "fail", "cannot tell: "+p.err.Error(), socketHint(c.cfg))
	default:
		c.add("agent-running", "warn", "cannot tell: "+p.err.Error(), "set local_api.socket so that status and check can ask the agent; meanwhile see systemctl status devid-agent")
	}
}

// permHint is the hint for err: run as root when it is a permission
// error (the state dir is 0700), else otherwise.
func permHint(err error, path, otherwise string) string {
	if errors.Is(err, fs.ErrPermission) {
		return stateDenied(path)
	}
	return otherwise
}

func (c *checker) stateDir() {
	st, err := os.Stat(c.cfg.StateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.add("state-dir", "warn", c.cfg.StateDir+" does not exist yet", "the agent creates it (mode 0700) on first start")
		return
	case err != nil:
		c.add("state-dir", "fail", err.Error(), permHint(err, c.cfg.StateDir, "the agent must be able to read and write its state dir"))
		return
	}
	if m := st.Mode().Perm(); m != 0o700 {
		c.add("state-dir", "fail", fmt.Sprintf("%s has mode %04o", c.cfg.StateDir, m), "chmod 0700 "+c.cfg.StateDir+" (it holds the device key)")
		return
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		c.add("state-dir", "warn", fmt.Sprintf("owned by uid %d, checking as uid %d", sys.Uid, os.Geteuid()), "run check as the agent's user (devid) or root")
		return
	}
	c.add("state-dir", "pass", c.cfg.StateDir+" mode 0700", "")
}

func (c *checker) clock() {
	var leaf *x509.Certificate
	if c.chain != nil {
		leaf = c.chain.Leaf
	}
	d := &statedir.Dir{Path: c.cfg.StateDir}
	var lkg time.Time
	if st, err := d.LoadState(); err == nil {
		lkg = st.LastKnownGood // an unreadable record: the agent starts without one
	}
	synced := c.synced
	if synced == nil {
		synced = clockSynced
	}
	r := clockCheck(c.now, leaf, lkg, d.File(statedir.StateFile), synced(), c.cfg.Clock.MaxWait.String())
	if _, err := d.LoadState(); errors.Is(err, fs.ErrPermission) {
		// The floors this user can see are not all the agent's.
		r.Detail += "; " + d.File(statedir.StateFile) + " is not readable here, so its saved time is not checked"
		if r.Hint == "" {
			r.Hint = "run as root for the whole clock check"
		}
	}
	c.add(r.ID, r.Result, r.Detail, r.Hint)
}

// clockResult is a result of the clock check.
func clockResult(result, detail, hint string) checkResult {
	return checkResult{ID: "clock", Name: "clock", Result: result, Detail: detail, Hint: hint}
}

// clockCheck is the clock line: the floor the agent waits for before any
// TLS, where it comes from (the saved one with its file), and whether the
// kernel reports NTP synchronisation. The floor is the agent's
// (agent.HardClockFloor, then last_known_good; agent/clockfloor.go).
func clockCheck(now time.Time, leaf *x509.Certificate, lkg time.Time, stateFile string, synced bool, maxWait string) checkResult {
	clk := now.UTC().Format(time.RFC3339)
	hard, hardWhy := agent.HardClockFloor(leaf)
	hardS := hardWhy + " " + hard.UTC().Format(time.RFC3339)
	savedS := agent.WhyLastKnownGood + " " + lkg.UTC().Format(time.RFC3339) + " (" + stateFile + ")"
	ntp := "the kernel reports it NTP-synchronised"
	if !synced {
		ntp = "the kernel does not report NTP synchronisation"
	}
	switch {
	case now.Before(hard):
		detail := fmt.Sprintf("clock %s is before the %s; %s", clk, hardS, ntp)
		hint := "synchronise the clock (systemd-timesyncd, chrony); the agent waits for it before any TLS"
		if synced {
			hint = "the certificate is dated after a synchronised clock: check the issuing CA's clock; the agent waits for it before any TLS"
		}
		return clockResult("fail", detail, hint)
	case now.Before(lkg) && synced:
		return clockResult("warn",
			fmt.Sprintf("clock %s, %s, is before the saved %s: the saved floor is wrong", clk, ntp, savedS),
			"nothing to do: the agent corrects it (lowers it to the clock) at its next clock check, or within the hour while connected")
	case now.Before(lkg):
		return clockResult("warn",
			fmt.Sprintf("clock %s is before the saved %s, though past the %s; %s, so either the clock is behind or the saved time is wrong", clk, savedS, hardS, ntp),
			"if the clock is right, nothing to do: after clock.max_wait ("+maxWait+") the agent tries TLS and a session that succeeds lowers the saved time; otherwise synchronise the clock (systemd-timesyncd, chrony)")
	}
	floor := hardS
	if lkg.After(hard) {
		floor = savedS
	}
	if !synced {
		return clockResult("warn", fmt.Sprintf("clock %s is past the %s, but %s", clk, floor, ntp), "enable time sync (timedatectl set-ntp true)")
	}
	return clockResult("pass", fmt.Sprintf("clock %s is past the %s; %s", clk, floor, ntp), "")
}

func (c *checker) trust() {
	if c.cfg.DPS.TrustBundle == "" {
		c.roots = dps.AzureRoots()
		c.add("trust-roots", "pass", fmt.Sprintf("embedded Azure roots (%d certificates)", len(c.roots)), "")
		return
	}
	b, err := os.ReadFile(c.cfg.DPS.TrustBundle)
	if err == nil {
		c.roots, err = dps.ParseTrustBundle(b)
	}
	if err != nil || len(c.roots) == 0 {
		hint := "point dps.trust_bundle at a PEM file of root certificates, or leave it empty for the Azure roots"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run as root or the agent's user " + config.AgentUser + ", who must be able to read it"
		}
		c.add("trust-roots", "fail", fmt.Sprintf("%s: %v (%d certificates)", c.cfg.DPS.TrustBundle, err, len(c.roots)), hint)
		return
	}
	var expired []string
	for _, r := range c.roots {
		if c.now.After(r.NotAfter) {
			expired = append(expired, r.Subject.CommonName)
		}
	}
	if len(expired) > 0 {
		c.add("trust-roots", "warn", "expired roots in the bundle: "+strings.Join(expired, ", "), "update the trust bundle")
		return
	}
	c.add("trust-roots", "pass", fmt.Sprintf("%s (%d certificates)", c.cfg.DPS.TrustBundle, len(c.roots)), "")
}

func (c *checker) assignment() {
	d := &statedir.Dir{Path: c.cfg.StateDir}
	as, err := d.LoadAssignment()
	var ce *statedir.CorruptError
	switch {
	case errors.As(err, &ce):
		// check only reads: the agent sets a damaged record aside itself.
		c.add("dps-assignment", "warn", fmt.Sprintf("%s is damaged (%v)", ce.Path, ce.Cause),
			"the agent sets it aside when it next reads it and registers with DPS again")
	case err == nil:
		c.add("dps-assignment", "pass", fmt.Sprintf("hub %s, device %s (cached %s)", as.Hub, as.DeviceID, as.AssignedAt.Format(time.RFC3339)), "")
	case errors.Is(err, statedir.ErrNotExist):
		hint := "the agent registers with DPS on its next start"
		if c.cfg.DPS.IDScope == "" {
			c.add("dps-assignment", "fail", "none cached and dps.id_scope is empty", "set dps.id_scope in the config")
			return
		}
		c.add("dps-assignment", "warn", "none cached yet", hint)
	case errors.Is(err, fs.ErrPermission):
		c.add("dps-assignment", "fail", err.Error(), stateDenied(d.File(statedir.AssignmentFile)))
	case errors.Is(err, statedir.ErrNewerSchema):
		c.add("dps-assignment", "fail", err.Error(), "a newer agent wrote it: run that agent version (an older one never overwrites it)")
	default:
		c.add("dps-assignment", "warn", err.Error(), "see the agent's log")
	}
}

// reach checks DPS and hub the way the agent connects: through the same
// dps.Network (resolve overrides, HTTP CONNECT proxy, WebSocket, trust
// bundle, client certificate always offered), up to the end of the TLS
// handshake (and the WebSocket upgrade), each with the credential the
// agent gives it: DPS always the device (factory) certificate, the hub
// the operational one when its chain is installed in the state dir (the
// operational slot, docs/rotation.md) and the path in force uses it, else
// the device certificate. Without a certificate to offer, DPS is probed
// up to its server certificate only, and the line says so.
func (c *checker) reach(ctx context.Context) {
	if !c.want["dps-reachable"] && !c.want["hub-reachable"] {
		return
	}
	if c.chain == nil || c.key == nil {
		why := c.noCred
		if why == "" {
			why = "no device certificate yet (the device has not been through the factory)"
		}
		c.serverOnly(ctx, why)
		c.add("hub-reachable", "skip", why, "")
		return
	}
	c.reachWith(ctx)
}

// serverOnly probes DPS without a client certificate: TCP, the proxy,
// and the server certificate verified against the trust bundle. DPS
// refusing the handshake for want of a client certificate is expected
// then, and comes after the server certificate was verified.
func (c *checker) serverOnly(ctx context.Context, why string) {
	if !c.want["dps-reachable"] {
		return
	}
	cloud, err := agent.NewDPSCloud(c.cfg, clock.System, nil, version)
	switch {
	case errors.Is(err, fs.ErrPermission):
		c.add("dps-reachable", "skip", fmt.Sprintf("%s; the trust bundle is not readable here either (%v)", why, err), "")
		return
	case err != nil:
		c.add("dps-reachable", "fail", err.Error(), "fix the config (devid-agent config check)")
		return
	}
	n := cloud.Network()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = n.ProbeServer(dctx, c.cfg.DPS.Endpoint); err == nil {
		c.add("dps-reachable", "pass", fmt.Sprintf("%s: TCP and the server certificate only, verified against the trust roots; no client certificate offered: %s", c.cfg.DPS.Endpoint, why), "")
		return
	}
	c.add("dps-reachable", "fail", fmt.Sprintf("%s, without a client certificate (%s): %v", c.cfg.DPS.Endpoint, why, err), reachHint(err, "client certificate"))
}

// reachHint is the hint for a failed probe; which names the certificate
// offered.
func reachHint(err error, which string) string {
	var te *dps.TLSError
	var pe *dps.ProxyError
	switch {
	case errors.As(err, &te) && te.Interception:
		return "the server's certificate is from another CA: TLS interception by a proxy or firewall; allow the endpoint through"
	case errors.As(err, &te) && te.Kind == dps.TLSUnknownAuthority:
		return "the server's certificate is not from a trusted root: wrong dps.trust_bundle, or TLS interception"
	case errors.As(err, &te) && (te.Kind == dps.TLSExpired || te.Kind == dps.TLSNotYetValid):
		return "certificate time check failed: is the clock right?"
	case errors.As(err, &te) && te.Kind == dps.TLSClientCertRejected:
		return "the network is fine: the server refused the " + which + "; check its DPS enrollment or hub device registration, and that it is not revoked"
	case errors.As(err, &pe):
		return "the proxy refused or failed the CONNECT tunnel: check network.proxy and its allow list"
	}
	return "check DNS, firewall (port 8883, or 443 with dps.transport = \"websocket\"), network.proxy and network.resolve"
}

// reachWith probes DPS and the hub with the credentials the agent gives
// them.
func (c *checker) reachWith(ctx context.Context) {
	cloud, err := agent.NewDPSCloud(c.cfg, clock.System, nil, version)
	if err != nil {
		c.add("dps-reachable", "fail", err.Error(), "fix the config (devid-agent config check)")
		return
	}
	n := cloud.Network()
	factory := (&credential.Credential{Signer: c.key, Chain: append([]*x509.Certificate{c.chain.Leaf}, c.chain.Intermediates...)}).TLSCertificate()
	device := "serial " + c.chain.Serial()
	via := "direct"
	if n.Proxy != "" {
		via = "via proxy " + config.RedactURL(n.Proxy)
	}
	// which names the certificate offered ("device certificate"), about
	// tells it apart (its serial).
	try := func(name, endpoint string, cred *tls.Certificate, which, about string) {
		if !c.want[name] {
			return
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		start := time.Now()
		if err := n.Probe(dctx, endpoint, cred); err != nil {
			c.add(name, "fail", fmt.Sprintf("%s (%s) with the %s (%s): %v", endpoint, via, which, about, err), reachHint(err, which))
			return
		}
		c.add(name, "pass", fmt.Sprintf("%s (%s) TLS ok in %s with the %s (%s)", endpoint, via, time.Since(start).Round(time.Millisecond), which, about), "")
	}
	try("dps-reachable", c.cfg.DPS.Endpoint, &factory, "device certificate", device)
	if !c.want["hub-reachable"] {
		return
	}
	as, err := (&statedir.Dir{Path: c.cfg.StateDir}).LoadAssignment()
	if err != nil {
		c.add("hub-reachable", "skip", "no hub assigned yet", "")
		return
	}
	op, err := renewal.LoadOperational(c.cfg)
	switch {
	case errors.Is(err, fs.ErrPermission):
		c.add("hub-reachable", "skip", "cannot read the operational key or certificate the hub gets (permission denied): run as root to probe with them", "")
	case err != nil:
		file := filepath.Join(c.cfg.StateDir, renewal.OperationalChainFile)
		c.add("hub-reachable", "fail", fmt.Sprintf("%s is installed, but the operational key and certificate the hub gets do not load (%v), so the hub was not probed", file, err),
			"the agent cannot use them either: see its log; registering with DPS again (renewal) issues a new operational certificate")
	case op != nil:
		defer op.Close()
		tc := op.TLSCertificate()
		// The serial as cert-expiry and status print it.
		try("hub-reachable", as.Hub, &tc, "operational certificate", fmt.Sprintf("%s, serial %x", renewal.OperationalChainFile, op.Leaf().SerialNumber))
	default:
		try("hub-reachable", as.Hub, &factory, "device certificate", device)
	}
}
