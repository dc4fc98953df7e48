package rotate

import (
	"crypto/x509"
	"fmt"
	"time"
)

// Check levels, as `devid-agent check` prints them.
const (
	CheckPass = "pass"
	CheckWarn = "warn"
	CheckFail = "fail"
)

// CheckResult is one `check` line about renewal.
type CheckResult struct {
	Level   string `json:"level"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// CheckRenewal judges whether the credential whose leaf is given can and
// will be renewed: path is the configured issuance path ("" or "none"
// when there is none), rec the renewal record. It warns when nothing can
// renew the certificate, and when renewals have been failing.
func CheckRenewal(path string, leaf *x509.Certificate, pol Policy, rec Record, now time.Time) CheckResult {
	if leaf == nil {
		return CheckResult{CheckWarn, "no certificate to renew yet", "program the device in the factory first"}
	}
	exp := leaf.NotAfter.UTC().Format(time.RFC3339)
	if path == PathNone || path == "none" {
		lvl := CheckWarn
		if !now.Before(leaf.NotAfter) {
			lvl = CheckFail
		}
		return CheckResult{lvl, fmt.Sprintf("no issuance path: nothing can renew the certificate that expires %s", exp),
			`set [renewal] path = "dps" or "est" in the config (docs/rotation.md)`}
	}
	if !now.Before(leaf.NotAfter) {
		return CheckResult{CheckFail, fmt.Sprintf("certificate expired %s; renewal via %s is being retried (%d failures, last: %s)", exp, path, rec.Failures, rec.LastError),
			"with path dps the factory credential can still get a new one; check DPS reachability"}
	}
	pl := pol.Next(now, leaf, rec.LastFailure)
	msg := fmt.Sprintf("renews via %s at %s (%s); certificate expires %s", path, pl.At.UTC().Format(time.RFC3339), pl.Reason, exp)
	if rec.Failures > 0 {
		return CheckResult{CheckWarn, fmt.Sprintf("%s; the last %d renewal attempts failed: %s", msg, rec.Failures, rec.LastError),
			"the current certificate keeps working until it expires; see the error for the cause"}
	}
	return CheckResult{Level: CheckPass, Message: msg}
}
