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
	return rotate.CheckRenewal(renewalPath(cfg.Renewal.Path), renewalLeaf(cfg), pol, rec, now)
}
