package jig_test

// The attest step with the real pieces: the device key in a swtpm whose
// EK certificate a test TPM maker issued, enroll/attest's Verifier on the
// jig, over a pty.

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/attest"
	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/factory/factorytest"
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
	j, d, _ := serveTPMBoard(t, sw.Addr(), "board-tpm-att", rootPool(l), true)

	// A line that trusts another maker refuses the board.
	other := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: tpmtest.NewMaker(t, "maker B").Pool()}), RequireAttestation: true}
	if _, err := jig.ProgramWith(testCtx(t), j, l, other, nil); !isRefusal(err, attest.ReasonEKUntrusted) {
		t.Fatalf("EK from an untrusted maker: %v", err)
	}
	if r, _ := l.Refused("board-tpm-att"); len(r) != 1 || r[0].Attestation != station.RefusedPrefix+attest.ReasonEKUntrusted || r[0].EKSHA256 == "" {
		t.Fatalf("refusal record %+v", r)
	}

	o := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: maker.Pool()}), RequireAttestation: true}
	var msg string
	res, err := jig.ProgramWith(testCtx(t), j, l, o, func(s jig.Step, m string) {
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
	j, _, _ := serveTPMBoard(t, sw.Addr(), "board-tpm-noek", rootPool(l), true)
	o := jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: tpmtest.NewMaker(t, "maker A").Pool()})}
	if _, err := jig.ProgramWith(testCtx(t), j, l, o, nil); !isRefusal(err, attest.ReasonNoEKCert) {
		t.Fatalf("TPM without EK certificate: %v", err)
	}
}

// serveTPMBoard serves a fresh board (its own state dir) with its key in
// the swtpm at addr over a new pty, until the test or benchmark ends, and
// returns the jig's end, the device and its state dir. With attester the
// board offers TPM key attestation.
func serveTPMBoard(tb testing.TB, addr, id string, roots *x509.CertPool, attester bool) (*jig.Jig, *factory.Device, string) {
	tb.Helper()
	pair := serialtest.Pty(tb)
	state := filepath.Join(tb.TempDir(), "state")
	ks, err := keys.Open("tpm:"+addr, state)
	if err != nil {
		tb.Fatal(err)
	}
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, roots),
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	if attester {
		att, ok := ks.(factory.Attester)
		if !ok {
			tb.Fatalf("the tpm key store %T is not a factory.Attester", ks)
		}
		d.Attester = att
	}
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		tb.Fatal(err)
	}
	factorytest.Serve(tb, d, p)
	return jig.New(pair.Master), d, state
}

// BenchmarkProgramTPM is the programming time of a board whose key is
// made in a swtpm (RSA EK certificate from a test maker), over a pty,
// without and with attestation: the difference is what attestation costs
// (scripts/bench.d/factory.sh reports it).
func BenchmarkProgramTPM(b *testing.B) {
	maker := tpmtest.NewMaker(b, "bench maker")
	sw := tpmtest.Start(b, tpmtest.ManufacturedBy(maker))
	l := newCA(b)
	l.HardwareModuleNameSAN = func(hwType asn1.ObjectIdentifier, serial []byte) (pkix.Extension, error) {
		return attest.HardwareModuleNameSAN(hwType, serial, attest.SANs{}, false)
	}
	for _, tc := range []struct {
		name string
		o    jig.Options
	}{
		{"without-attestation", jig.Options{}},
		{"attested", jig.Options{Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: maker.Pool()}), RequireAttestation: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			wire := 0
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				j, _, _ := serveTPMBoard(b, sw.Addr(), fmt.Sprintf("bench-%s-%d", tc.name, i), rootPool(l), true)
				b.StartTimer()
				res, err := jig.ProgramWith(context.Background(), j, l, tc.o, nil)
				if err != nil {
					b.Fatal(err)
				}
				wire = res.BytesSent + res.BytesReceived
			}
			b.ReportMetric(float64(wire), "wire-bytes/op")
			b.ReportMetric(float64(wire)/11520*1000, "floor-ms@115200/op")
		})
	}
}
