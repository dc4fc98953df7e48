package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
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
)

// checkResult is one line of `devid-agent check`.
type checkResult struct {
	Name   string `json:"name"`
	Result string `json:"result"` // pass, warn, fail, skip
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
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
}

func (c *checker) add(name, result, detail, hint string) {
	c.results = append(c.results, checkResult{name, result, detail, hint})
}

func checkFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	cfgPath := fs.String("config", config.DefaultPath, "config `FILE` (TOML)")
	asJSON := fs.Bool("json", false, "print JSON")
	offline := fs.Bool("offline", false, "skip the DPS and hub reachability checks")
	return func(ctx context.Context, _ []string) error { return runCheck(ctx, *cfgPath, *asJSON, *offline) }
}

func runCheck(ctx context.Context, cfgPath string, asJSON, offline bool) error {
	c := &checker{now: time.Now()}
	cfg, degraded, err := loadConfigOrLKG(cfgPath)
	if err != nil {
		c.add("config", "fail", err.Error(), "run `devid-agent config check --config "+cfgPath+"` and fix each field it names")
	} else {
		c.cfg = cfg
		resolveKeySpec(cfg)
		if degraded != "" {
			c.add("config", "warn", degraded, "fix the file (devid-agent config check --config "+cfgPath+"); the checks below use the last-known-good config")
		} else {
			c.add("config", "pass", cfgPath+" is valid", "")
		}
		c.stateDir()
		c.keyAndCert()
		c.clock()
		c.trust()
		c.assignment()
		c.queue()
		if !offline {
			c.reach(ctx)
		}
	}
	failed := 0
	for _, r := range c.results {
		if r.Result == "fail" {
			failed++
		}
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(c.results)
	} else {
		for _, r := range c.results {
			fmt.Printf("[%s] %-22s %s\n", strings.ToUpper(r.Result), r.Name, r.Detail)
			if r.Hint != "" && r.Result != "pass" {
				fmt.Printf("       %-22s hint: %s\n", "", r.Hint)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

func (c *checker) stateDir() {
	st, err := os.Stat(c.cfg.StateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.add("state dir", "warn", c.cfg.StateDir+" does not exist yet", "the agent creates it (mode 0700) on first start")
		return
	case err != nil:
		c.add("state dir", "fail", err.Error(), "the agent must be able to read and write its state dir")
		return
	}
	if m := st.Mode().Perm(); m != 0o700 {
		c.add("state dir", "fail", fmt.Sprintf("%s has mode %04o", c.cfg.StateDir, m), "chmod 0700 "+c.cfg.StateDir+" (it holds the device key)")
		return
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		c.add("state dir", "warn", fmt.Sprintf("owned by uid %d, checking as uid %d", sys.Uid, os.Geteuid()), "run check as the agent's user (devid) or root")
		return
	}
	c.add("state dir", "pass", c.cfg.StateDir+" mode 0700", "")
}

func (c *checker) keyAndCert() {
	ks, err := keys.Open(c.cfg.Key.Backend, c.cfg.StateDir)
	if err != nil {
		c.add("key", "fail", err.Error(), "set key.backend to auto, file:PATH or tpm:...")
		return
	}
	k, err := ks.Load()
	if errors.Is(err, keys.ErrNoKey) {
		c.add("key", "warn", "no device key yet ("+ks.Name()+")", "the device has not been through the factory jig: run `devid-jig program` against factory.port")
	} else if err != nil {
		c.add("key", "fail", err.Error(), "check the key backend (TPM device access, key file permissions)")
	} else {
		c.key = k
		detail := "present (" + k.Backend() + ")"
		if fsk, ok := ks.(interface{ Path() string }); ok {
			if st, err := os.Stat(fsk.Path()); err == nil && st.Mode().Perm() != 0o600 {
				c.add("key", "fail", fmt.Sprintf("%s has mode %04o", fsk.Path(), st.Mode().Perm()), "chmod 0600 "+fsk.Path())
				return
			}
			detail += " " + fsk.Path() + " mode 0600"
		}
		c.add("key", "pass", detail, "")
	}
	ch, err := certstore.Open(c.cfg.StateDir, nil).Load()
	if errors.Is(err, certstore.ErrNoChain) {
		c.add("certificate", "warn", "no certificate installed", "program the device on the factory jig")
		return
	} else if err != nil {
		c.add("certificate", "fail", err.Error(), "the chain file is unreadable; re-install it from the jig (INSTALL)")
		return
	}
	c.chain = ch
	if c.key != nil && !ch.Matches(c.key.Public()) {
		c.add("key matches cert", "fail", "the certificate's public key is not the device key", "re-issue the certificate for this key on the jig; do not re-key")
	} else if c.key != nil {
		c.add("key matches cert", "pass", "serial "+ch.Serial()+", CN "+ch.Leaf.Subject.CommonName, "")
	}
	// Chain validity against the factory root.
	if roots, err := certstore.LoadRoots(c.cfg.Factory.Root); err != nil {
		c.add("chain", "warn", "factory root unavailable: "+err.Error(), "install the factory root at factory.root to verify the chain")
	} else {
		inter := x509.NewCertPool()
		for _, ic := range ch.Intermediates {
			inter.AddCert(ic)
		}
		_, err := ch.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: c.now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			c.add("chain", "fail", err.Error(), "the installed chain does not verify to factory.root; re-program the device")
		} else {
			c.add("chain", "pass", "verifies to "+c.cfg.Factory.Root, "")
		}
	}
	left := ch.NotAfter().Sub(c.now)
	life := ch.NotAfter().Sub(ch.Leaf.NotBefore)
	switch {
	case left <= 0:
		c.add("cert expiry", "fail", "expired "+ch.NotAfter().Format(time.RFC3339), "renew the certificate (renewal.path) or re-program the device")
	case left < life/10 || left < 7*24*time.Hour:
		c.add("cert expiry", "warn", fmt.Sprintf("expires %s (%s)", ch.NotAfter().Format(time.RFC3339), humanUntil(left)), "renewal should already have happened; see `devid-agent status`")
	default:
		c.add("cert expiry", "pass", fmt.Sprintf("expires %s (%s)", ch.NotAfter().Format(time.RFC3339), humanUntil(left)), "")
	}
	r := renewal.Check(c.cfg, c.now)
	c.add("renewal", r.Level, r.Message, r.Hint)
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
	c.results = append(c.results, clockCheck(c.now, leaf, lkg, d.File(statedir.StateFile), synced(), c.cfg.Clock.MaxWait.String()))
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
		return checkResult{"clock", "fail", detail, hint}
	case now.Before(lkg) && synced:
		return checkResult{"clock", "warn",
			fmt.Sprintf("clock %s, %s, is before the saved %s: the saved floor is wrong", clk, ntp, savedS),
			"nothing to do: the agent corrects it (lowers it to the clock) at its next clock check, or within the hour while connected"}
	case now.Before(lkg):
		return checkResult{"clock", "warn",
			fmt.Sprintf("clock %s is before the saved %s, though past the %s; %s, so either the clock is behind or the saved time is wrong", clk, savedS, hardS, ntp),
			"if the clock is right, nothing to do: after clock.max_wait (" + maxWait + ") the agent tries TLS and a session that succeeds lowers the saved time; otherwise synchronise the clock (systemd-timesyncd, chrony)"}
	}
	floor := hardS
	if lkg.After(hard) {
		floor = savedS
	}
	if !synced {
		return checkResult{"clock", "warn", fmt.Sprintf("clock %s is past the %s, but %s", clk, floor, ntp), "enable time sync (timedatectl set-ntp true)"}
	}
	return checkResult{"clock", "pass", fmt.Sprintf("clock %s is past the %s; %s", clk, floor, ntp), ""}
}

func (c *checker) trust() {
	if c.cfg.DPS.TrustBundle == "" {
		c.roots = dps.AzureRoots()
		c.add("trust roots", "pass", fmt.Sprintf("embedded Azure roots (%d certificates)", len(c.roots)), "")
		return
	}
	b, err := os.ReadFile(c.cfg.DPS.TrustBundle)
	if err == nil {
		c.roots, err = dps.ParseTrustBundle(b)
	}
	if err != nil || len(c.roots) == 0 {
		c.add("trust roots", "fail", fmt.Sprintf("%s: %v (%d certificates)", c.cfg.DPS.TrustBundle, err, len(c.roots)), "point dps.trust_bundle at a PEM file of root certificates, or leave it empty for the Azure roots")
		return
	}
	var expired []string
	for _, r := range c.roots {
		if c.now.After(r.NotAfter) {
			expired = append(expired, r.Subject.CommonName)
		}
	}
	if len(expired) > 0 {
		c.add("trust roots", "warn", "expired roots in the bundle: "+strings.Join(expired, ", "), "update the trust bundle")
		return
	}
	c.add("trust roots", "pass", fmt.Sprintf("%s (%d certificates)", c.cfg.DPS.TrustBundle, len(c.roots)), "")
}

func (c *checker) assignment() {
	d := &statedir.Dir{Path: c.cfg.StateDir}
	as, err := d.LoadAssignment()
	switch {
	case err == nil:
		c.add("dps assignment", "pass", fmt.Sprintf("hub %s, device %s (cached %s)", as.Hub, as.DeviceID, as.AssignedAt.Format(time.RFC3339)), "")
	case errors.Is(err, statedir.ErrNotExist):
		hint := "the agent registers with DPS on its next start"
		if c.cfg.DPS.IDScope == "" {
			c.add("dps assignment", "fail", "none cached and dps.id_scope is empty", "set dps.id_scope in the config")
			return
		}
		c.add("dps assignment", "warn", "none cached yet", hint)
	default:
		c.add("dps assignment", "warn", err.Error(), "the agent re-registers with DPS")
	}
}

// reach checks DPS and hub the way the agent connects: through the same
// dps.Network (resolve overrides, HTTP CONNECT proxy, WebSocket, trust
// bundle, client certificate always offered), up to the end of the TLS
// handshake (and the WebSocket upgrade).
func (c *checker) reach(ctx context.Context) {
	cloud, err := agent.NewDPSCloud(c.cfg, clock.System, nil, version)
	if err != nil {
		c.add("dps reachable", "fail", err.Error(), "fix the config (devid-agent config check)")
		return
	}
	n := cloud.Network()
	var cred *tls.Certificate
	if c.chain != nil && c.key != nil {
		tc := (&credential.Credential{Signer: c.key, Chain: append([]*x509.Certificate{c.chain.Leaf}, c.chain.Intermediates...)}).TLSCertificate()
		cred = &tc
	}
	via := "direct"
	if n.Proxy != "" {
		via = "via proxy " + config.RedactURL(n.Proxy)
	}
	try := func(name, endpoint string) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		start := time.Now()
		if err := n.Probe(dctx, endpoint, cred); err != nil {
			hint := "check DNS, firewall (port 8883, or 443 with dps.transport = \"websocket\"), network.proxy and network.resolve"
			var te *dps.TLSError
			var pe *dps.ProxyError
			switch {
			case errors.As(err, &te) && te.Interception:
				hint = "the server's certificate is from another CA: TLS interception by a proxy or firewall; allow the endpoint through"
			case errors.As(err, &te) && te.Kind == dps.TLSUnknownAuthority:
				hint = "the server's certificate is not from a trusted root: wrong dps.trust_bundle, or TLS interception"
			case errors.As(err, &te) && (te.Kind == dps.TLSExpired || te.Kind == dps.TLSNotYetValid):
				hint = "certificate time check failed: is the clock right?"
			case errors.As(err, &pe):
				hint = "the proxy refused or failed the CONNECT tunnel: check network.proxy and its allow list"
			}
			c.add(name, "fail", fmt.Sprintf("%s (%s): %v", endpoint, via, err), hint)
			return
		}
		c.add(name, "pass", fmt.Sprintf("%s (%s) TLS ok in %s", endpoint, via, time.Since(start).Round(time.Millisecond)), "")
	}
	try("dps reachable", c.cfg.DPS.Endpoint)
	if as, err := (&statedir.Dir{Path: c.cfg.StateDir}).LoadAssignment(); err == nil {
		try("hub reachable", as.Hub)
	} else {
		c.add("hub reachable", "skip", "no hub assigned yet", "")
	}
}
