package jig_test

// The attest step with the real pieces: the device key in a swtpm whose
// EK certificate a test TPM maker issued, enroll/attest's Verifier on the
// jig, over a pty.

import (
	"context"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/attest"
	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/enroll/station"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
	"devid/hal/tpm/tpmtest"
)

func TestAttestOverPtyTPM(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	sw := tpmtest.Start(t, tpmtest.ManufacturedBy(maker))
	l := newCA(t)
	l.HardwareModuleNameSAN = func(hwType asn1.ObjectIdentifier, serial []byte) (pkix.Extension, error) {
		return attest.HardwareModuleNameSAN(hwType, serial, attest.SANs{}, false)
	}
	pair := serialtest.Pty(t)
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("tpm:"+sw.Addr(), state)
	if err != nil {
		t.Fatal(err)
	}
	att, ok := ks.(factory.Attester)
	if !ok {
		t.Fatalf("the tpm key store %T is not a factory.Attester", ks)
	}
	d := &factory.Device{ID: "board-tpm-att", Keys: ks, Certs: certstore.Open(state, rootPool(l)), Attester: att,
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, p) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Serve returned %v, want context.Canceled", err)
		}
		p.Close()
	})

	// A line that trusts another maker refuses the board.
	other := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: tpmtest.NewMaker(t, "maker B").Pool()}), RequireAttestation: true}
	if _, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, other, nil); !isRefusal(err, attest.ReasonEKUntrusted) {
		t.Fatalf("EK from an untrusted maker: %v", err)
	}
	if r, _ := l.Refused("board-tpm-att"); len(r) != 1 || r[0].Attestation != station.RefusedPrefix+attest.ReasonEKUntrusted || r[0].EKSHA256 == "" {
		t.Fatalf("refusal record %+v", r)
	}

	o := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: maker.Pool()}), RequireAttestation: true}
	var msg string
	res, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, o, func(s jig.Step, m string) {
		if s == jig.StepAttest {
			msg = m
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attest: %s", msg)
	if res.Attestation.Outcome != station.Attested || res.Attestation.EKSHA256 == "" {
		t.Fatalf("attestation %+v", res.Attestation)
	}
	chain, err := d.Certs.Load()
	if err != nil {
		t.Fatal(err)
	}
	hwType, serialNum, ok, err := attest.ParseHardwareModuleName(chain.Leaf)
	if err != nil || !ok || !hwType.Equal(attest.HWTypeTPM2) || len(serialNum) != 32 {
		t.Fatalf("HardwareModuleName %v %x %v %v", hwType, serialNum, ok, err)
	}
	recs, _ := l.Issued("board-tpm-att")
	if len(recs) != 1 || recs[0].Attestation != station.Attested || recs[0].EKSHA256 != res.Attestation.EKSHA256 {
		t.Fatalf("ledger %+v", recs)
	}
}

// TestAttestTPMWithoutEKCert: a TPM without an EK certificate (swtpm not
// manufactured by a maker) is refused as no-ek-cert, from the board's NAK.
func TestAttestTPMWithoutEKCert(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	l := newCA(t)
	pair := serialtest.Pty(t)
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("tpm:"+sw.Addr(), state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: "board-tpm-noek", Keys: ks, Certs: certstore.Open(state, rootPool(l)), Attester: ks.(factory.Attester),
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, p) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	o := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: tpmtest.NewMaker(t, "maker A").Pool()})}
	if _, err := jig.ProgramWith(testCtx(t), jig.New(pair.Master), l, o, nil); !isRefusal(err, attest.ReasonNoEKCert) {
		t.Fatalf("TPM without EK certificate: %v", err)
	}
}
