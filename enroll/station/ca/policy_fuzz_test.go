package ca_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/station/ca"
)

// FuzzLoadPolicy: the CA policy file is edited by hand on the station.
// LoadPolicy must never panic; an error names the file; what it accepts
// is usable (positive validity, an ID pattern).
func FuzzLoadPolicy(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		f.Fatal(err)
	}
	def, err := os.ReadFile(filepath.Join(dir, ca.PolicyFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(def)
	f.Add([]byte(`validity = "1h"` + "\n" + `backdate = "0s"` + "\n" + `crl_validity = "1h"` + "\n" + `allowed_id = "x"`))
	f.Add([]byte(`validity = "-1h"`))
	f.Add([]byte(`allowed_id = "("`))
	f.Add([]byte(`bogus = 1`))
	f.Add([]byte(`validity = "1h"` + "\n" + `backdate = "0s"` + "\n" + `crl_validity = "1h"` + "\n" + `allowed_id = "x"` + "\n" + `require_tpm_attestation = true`))
	f.Add([]byte(`require_tpm_attestation = 1`))
	f.Add([]byte(`validity = "1h"` + "\n" + `backdate = "0s"` + "\n" + `crl_validity = "1h"` + "\n" + `allowed_id = "x"` + "\n" + `ledger = "postgres://devid@db/ledger"`))
	f.Add([]byte(`validity = "1h"` + "\n" + `backdate = "0s"` + "\n" + `crl_validity = "1h"` + "\n" + `allowed_id = "x"` + "\n" + `ledger = "mysql://db"`))
	f.Add([]byte("\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "policy.toml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		pol, err := ca.LoadPolicy(p)
		if err != nil {
			if !strings.Contains(err.Error(), "CA policy") {
				t.Fatalf("error does not say what was wrong: %v", err)
			}
			return
		}
		if pol.Validity <= 0 || pol.CRLValidity <= 0 || pol.Backdate < 0 || pol.AllowedID == nil ||
			pol.Ledger != "" && pol.Ledger != "file" && !strings.HasPrefix(pol.Ledger, "postgres") {
			t.Fatalf("accepted an unusable policy: %+v", pol)
		}
	})
}
