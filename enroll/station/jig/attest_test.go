package jig_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/factory"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station"
	"devid/enroll/station/ca"
	"devid/enroll/station/internal/fakeattest"
	"devid/enroll/station/jig"
	"devid/hal/serial/serialtest"
)

// tpmMaker is the fake TPM manufacturer: its issuing CA signs EK
// certificates, its root is the line's --tpm-roots.
var tpmMaker = pkitest.NewCA("tpm maker")

// attestCA is a local CA that writes the fake HardwareModuleName.
func attestCA(t testing.TB) *ca.Local {
	l := newCA(t)
	l.HardwareModuleNameSAN = fakeattest.HardwareModuleNameSAN
	return l
}

// startTPMDevice serves a device whose key is "in a TPM" (the fake) with
// a genuine EK certificate; mod, if not nil, changes the fake TPM.
func startTPMDevice(t testing.TB, tty, id string, l *ca.Local, mod func(*fakeattest.TPM)) (*device, *fakeattest.TPM) {
	t.Helper()
	tpm := &fakeattest.TPM{EK: tpmMaker.Leaf(pkitest.Key().Public(), "ek "+id, nil), Chain: []*x509.Certificate{tpmMaker.Issuer}}
	if mod != nil {
		mod(tpm)
	}
	d := startDeviceWith(t, tty, id, rootPool(l), func(d *device) {
		tpm.Keys = d.Keys
		d.Attester = tpm
	})
	return d, tpm
}

func attestOpts() jig.Options {
	return jig.Options{Verifier: &fakeattest.Verifier{Roots: tpmMaker.Pool()}}
}

func TestAttestedProgramOverPty(t *testing.T) {
	t.Parallel()
	l := attestCA(t)
	pair := serialtest.Pty(t)
	d, tpm := startTPMDevice(t, pair.TTY, "board-att-1", l, nil)
	msgs := map[jig.Step]string{}
	o := attestOpts()
	o.RequireAttestation = true
	res, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, o, func(s jig.Step, m string) { msgs[s] = m })
	if err != nil {
		t.Fatal(err)
	}
	ekSum := sha256.Sum256(tpm.EK.Raw)
	if a := res.Attestation; a.Outcome != station.Attested || a.EKSHA256 != hex.EncodeToString(ekSum[:]) {
		t.Fatalf("attestation %+v", a)
	}
	if m := msgs[jig.StepAttest]; !strings.HasPrefix(m, "ek tpm maker issuing serial "+hex.EncodeToString(tpm.EK.SerialNumber.Bytes())+", key in TPM (fixedTPM), ") {
		t.Fatalf("attest progress %q", m)
	}
	if n, m := tpm.Attests.Load(), tpm.Activations.Load(); n != 1 || m != 1 {
		t.Fatalf("%d attestations, %d activations", n, m)
	}
	// The leaf names the TPM: the HardwareModuleName SAN with the EK serial.
	chain, err := d.Certs.Load()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fakeattest.HardwareModuleNameSAN(fakeattest.HWType, tpm.EK.SerialNumber.Bytes())
	found := false
	for _, e := range chain.Leaf.Extensions {
		found = found || (e.Id.Equal(want.Id) && bytes.Equal(e.Value, want.Value))
	}
	if !found {
		t.Fatal("the certificate lacks the HardwareModuleName SAN")
	}
	recs, err := l.Issued("board-att-1")
	if err != nil || len(recs) != 1 || recs[0].Attestation != station.Attested || recs[0].EKSHA256 != res.Attestation.EKSHA256 {
		t.Fatalf("ledger %+v %v", recs, err)
	}
}

// TestAttestRefusals: each way attestation fails refuses the board at the
// attest step with its reason; nothing is issued, the board stays keyed,
// and the ledger records the refusal.
func TestAttestRefusals(t *testing.T) {
	t.Parallel()
	foreignMaker := pkitest.NewCA("foreign maker")
	for _, tc := range []struct {
		name    string
		mod     func(*fakeattest.TPM)
		noTPM   bool // a board without an Attester
		reason  string
		ekKnown bool // the refusal record names the EK certificate
	}{
		{"EK from an unknown maker", func(p *fakeattest.TPM) {
			p.EK, p.Chain = foreignMaker.Leaf(pkitest.Key().Public(), "ek", nil), []*x509.Certificate{foreignMaker.Issuer}
		}, false, "ek-untrusted", true},
		{"replayed statement", func(p *fakeattest.TPM) { p.StaleNonce = true }, false, "nonce", true},
		{"certifies another key", func(p *fakeattest.TPM) { p.OtherKey = true }, false, "key-not-csr", true},
		{"key can leave the TPM", func(p *fakeattest.TPM) { p.NotFixedTPM = true }, false, "key-attributes", true},
		{"statement garbage", func(p *fakeattest.TPM) { p.Garbage = true }, false, "malformed", false},
		{"TPM without EK certificate", func(p *fakeattest.TPM) { p.EK = nil }, false, jig.ReasonNoEKCert, false},
		{"activation fails on the board", func(p *fakeattest.TPM) { p.ActivateErr = errors.New("TPM_RC_INTEGRITY") }, false, jig.ReasonActivation, true},
		{"AK in another TPM", func(p *fakeattest.TPM) { p.EKSecret = []byte("someone else's EK") }, false, jig.ReasonActivation, true},
		{"software key on a line that requires attestation", nil, true, jig.ReasonNotOffered, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := attestCA(t)
			pair := serialtest.Pty(t)
			id := "board-" + strings.ReplaceAll(tc.reason, "-", "")
			var d *device
			if tc.noTPM {
				d = startDevice(t, pair.TTY, id, rootPool(l))
			} else {
				d, _ = startTPMDevice(t, pair.TTY, id, l, tc.mod)
			}
			o := attestOpts()
			o.RequireAttestation = true
			_, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, o, nil)
			var r *jig.Refusal
			var se *jig.StepError
			if !errors.As(err, &r) || !errors.As(err, &se) || se.Step != jig.StepAttest || r.Reason != tc.reason || r.Detail == "" {
				t.Fatalf("err = %v, want an attest refusal %s", err, tc.reason)
			}
			if want := "attest: attestation refused: " + tc.reason + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q, want prefix %q", err, want)
			}
			if st := checkState(t, d); st != factory.StateKeyed {
				t.Errorf("refused board is %s, want keyed", st)
			}
			issued, _ := l.Issued(id)
			refused, _ := l.Refused(id)
			if len(issued) != 0 || len(refused) != 1 || refused[0].Attestation != station.RefusedPrefix+tc.reason ||
				refused[0].Reason != r.Detail || refused[0].KeySHA256 == "" || (refused[0].EKSHA256 != "") != tc.ekKnown {
				t.Fatalf("ledger: issued %+v, refused %+v", issued, refused)
			}
		})
	}
}

// TestAttestOptional: a line that does not require attestation programs a
// board without it (not-offered), and a jig without TPM roots (an older
// jig) programs a board that offers it without asking (not-checked). A
// board that offers it and fails is refused even when not required.
func TestAttestOptional(t *testing.T) {
	t.Parallel()
	l := attestCA(t)
	for _, tc := range []struct {
		name    string
		tpm     bool
		opts    jig.Options
		outcome string
	}{
		{"software key, jig with roots", false, attestOpts(), station.NotOffered},
		{"TPM board, jig without roots", true, jig.Options{}, station.NotChecked},
		{"TPM board, jig with roots", true, attestOpts(), station.Attested},
	} {
		pair := serialtest.Pty(t)
		id := "opt-" + strings.ReplaceAll(tc.outcome, "-", "")
		var tpm *fakeattest.TPM
		if tc.tpm {
			_, tpm = startTPMDevice(t, pair.TTY, id, l, nil)
		} else {
			startDevice(t, pair.TTY, id, rootPool(l))
		}
		res, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, tc.opts, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		recs, _ := l.Issued(id)
		if res.Attestation.Outcome != tc.outcome || len(recs) != 1 || recs[0].Attestation != tc.outcome {
			t.Fatalf("%s: outcome %q, ledger %+v", tc.name, res.Attestation.Outcome, recs)
		}
		if tpm != nil && tc.outcome == station.NotChecked && tpm.Attests.Load() != 0 {
			t.Fatalf("%s: a jig without roots sent ATTEST", tc.name)
		}
	}
	// Not required, offered, failing: refused all the same.
	pair := serialtest.Pty(t)
	startTPMDevice(t, pair.TTY, "opt-bad", l, func(p *fakeattest.TPM) { p.StaleNonce = true })
	if _, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, attestOpts(), nil); !isRefusal(err, "nonce") {
		t.Fatalf("failing attestation on an optional line: %v", err)
	}
}

// TestCAPolicyRequiresAttestation: require_tpm_attestation in the CA
// refuses a request without attestation even from a jig that does not
// ask, and records it.
func TestCAPolicyRequiresAttestation(t *testing.T) {
	t.Parallel()
	l := requireCA(t)
	pair := serialtest.Pty(t)
	startDevice(t, pair.TTY, "board-pol-1", rootPool(l))
	_, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, jig.Options{}, nil)
	var se *jig.StepError
	if !errors.Is(err, ca.ErrPolicy) || !errors.As(err, &se) || se.Step != jig.StepSign || !strings.Contains(err.Error(), "require_tpm_attestation") {
		t.Fatalf("err = %v, want a sign-step policy refusal", err)
	}
	refused, _ := l.Refused("board-pol-1")
	if len(refused) != 1 || refused[0].Attestation != "refused:policy" {
		t.Fatalf("refusals %+v", refused)
	}
	// An attested board passes the same policy.
	pair2 := serialtest.Pty(t)
	startTPMDevice(t, pair2.TTY, "board-pol-2", l, nil)
	if _, err := jig.ProgramWith(testCtx(t), jig.New(pair2.Master), l, attestOpts(), nil); err != nil {
		t.Fatal(err)
	}
}

// TestAttestRetransmissions: damaged and lost frames of ATTEST, ATTEST
// READ and ACTIVATE are resent; the board does not attest or activate
// twice for a lost reply.
func TestAttestRetransmissions(t *testing.T) {
	t.Parallel()
	l := attestCA(t)
	link := serialtest.NewLink(t)
	_, tpm := startTPMDevice(t, link.DeviceTTY, "board-att-rt", l, nil)
	hits := map[string]bool{}
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		switch {
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK ATTEST size=")) && !hits["attest-lost"]:
			hits["attest-lost"] = true
			return nil // the reply to ATTEST is lost: the resend is answered from the stored reply
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" ATTEST READ 144 ")) && !hits["read-flip"]:
			hits["read-flip"] = true
			b[len(b)/2] ^= 0x04
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK ATTEST DATA 288 ")) && !hits["data-flip"]:
			hits["data-flip"] = true
			b[len(b)/2] ^= 0x01
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" ACTIVATE DATA 144 ")) && !hits["act-flip"]:
			hits["act-flip"] = true
			b[3] ^= 0x80
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK ACTIVATE COMMIT ")) && !hits["commit-lost"]:
			hits["commit-lost"] = true
			return nil
		}
		return b
	})
	j := jigOn(t, link.JigTTY)
	j.V1Only = true                                                            // the offsets above are v1's (v2: v2_test.go)
	j.ReplyTimeout, j.SlowTimeout = 500*time.Millisecond, 500*time.Millisecond // lost replies are waited out
	res, err := jig.ProgramWith(testCtx(t), j, l, attestOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"attest-lost", "read-flip", "data-flip", "act-flip", "commit-lost"} {
		if !hits[h] {
			t.Errorf("tamper %q never fired", h)
		}
	}
	if res.Attestation.Outcome != station.Attested || tpm.Attests.Load() != 1 || tpm.Activations.Load() != 1 {
		t.Fatalf("outcome %q after %d attestations, %d activations", res.Attestation.Outcome, tpm.Attests.Load(), tpm.Activations.Load())
	}
}

func isRefusal(err error, reason string) bool {
	var r *jig.Refusal
	return errors.As(err, &r) && r.Reason == reason
}

// requireCA is a local CA whose policy sets require_tpm_attestation.
func requireCA(t *testing.T) *ca.Local {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, ca.PolicyFile)
	b, err := os.ReadFile(pol)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte("require_tpm_attestation = false"), []byte("require_tpm_attestation = true"), 1)
	if err := os.WriteFile(pol, b, 0o644); err != nil {
		t.Fatal(err)
	}
	l2, err := ca.Open(dir, "test-station")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Close() })
	l2.HardwareModuleNameSAN = fakeattest.HardwareModuleNameSAN
	if !l2.Policy().RequireTPMAttestation {
		t.Fatal("policy not in force")
	}
	return l2
}
