package renewal

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"time"

	"devid/agent/config"
	"devid/enroll/certstore"
	"devid/enroll/rotate"
)

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
// with paths dps and hub (when issued), else the device certificate.
func renewalLeaf(cfg *config.Config) *x509.Certificate {
	files := []string{certstore.Open(cfg.StateDir, nil).Path()}
	if p, _ := effectivePath(cfg); p == "dps" || p == "hub" {
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

// StatusFromFiles is the renewal section of `devid-agent status` when
// the agent does not answer: config, renewal.json and the chain.
func StatusFromFiles(cfg *config.Config, now time.Time) rotate.Status {
	pol, err := rotate.PolicyFromFields(cfg.Renewal.RenewAt, cfg.Renewal.Jitter, cfg.Renewal.Retry, cfg.Renewal.Margin)
	if err != nil {
		pol = rotate.DefaultPolicy()
	}
	rec, _ := rotate.ReadRecord(cfg.StateDir)
	if rec.Policy != nil {
		pol = *rec.Policy
	}
	path, why := effectivePath(cfg)
	st := rotate.Status{Path: renewalPath(path), Policy: pol.String(), LastSuccess: rec.LastSuccess,
		LastFailure: rec.LastFailure, LastError: rec.LastError, Failures: rec.Failures, Rotations: rec.Rotations}
	if cfg.Renewal.Path == "auto" {
		st.Configured, st.Why = "auto", why
		if path == "" {
			st.Path = "auto"
		}
	}
	if leaf := renewalLeaf(cfg); leaf != nil {
		st.NotAfter = leaf.NotAfter
		if path != "" && st.Path != rotate.PathNone {
			pl := pol.Next(now, leaf, rec.LastFailure)
			st.Next, st.Reason = pl.At, pl.Reason
		}
	}
	return st
}

// Check is the `devid-agent check` line about renewal: it warns when no
// issuance path can renew the certificate, and when renewals fail.
func Check(cfg *config.Config, now time.Time) rotate.CheckResult {
	pol, err := rotate.PolicyFromFields(cfg.Renewal.RenewAt, cfg.Renewal.Jitter, cfg.Renewal.Retry, cfg.Renewal.Margin)
	if err != nil {
		return rotate.CheckResult{Level: rotate.CheckFail, Message: err.Error(), Hint: "fix [renewal] in the config (docs/rotation.md)"}
	}
	rec, _ := rotate.ReadRecord(cfg.StateDir)
	if rec.Policy != nil {
		pol = *rec.Policy
	}
	path, why := effectivePath(cfg)
	if path == "" {
		// Auto, undecided: the first registration decides.
		return rotate.CheckResult{Level: rotate.CheckWarn, Message: "renewal path not decided yet (" + why + ")",
			Hint: "start the agent: its first DPS registration finds out whether DPS issues certificates (docs/rotation.md)"}
	}
	res := rotate.CheckRenewal(renewalPath(path), renewalLeaf(cfg), pol, rec, now)
	if why != "" {
		res.Message += "; " + why
	}
	if path == "none" && cfg.Renewal.Path == "auto" {
		res.Hint = "give the DPS enrollment certificate issuance and delete " + ChoiceFile + " in the state dir, or set renewal.est_url (docs/rotation.md)"
	}
	return res
}
