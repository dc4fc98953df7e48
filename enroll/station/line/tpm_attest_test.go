package line_test

// The station's attest step with the real pieces: the device keys in
// swtpm instances whose EK certificates test TPM makers issued, and
// enroll/attest's Verifier on the station, over pty pairs.

import (
	"context"
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
	"devid/enroll/keys"
	_ "devid/enroll/keys/tpmkey" // registers the "tpm" backend
	"devid/enroll/station"
	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial/serialtest"
	"devid/hal/tpm/tpmtest"
)

// TestStationAttestationTPM: two swtpm boards, one from the maker the
// station trusts (programmed, attested, the HardwareModuleName in its
// certificate) and one from another maker (failed, cause
// attest:ek-untrusted).
func TestStationAttestationTPM(t *testing.T) {
	trusted, other := tpmtest.NewMaker(t, "maker A"), tpmtest.NewMaker(t, "maker B")
	l := newCA(t)
	l.HardwareModuleNameSAN = func(hwType asn1.ObjectIdentifier, serial []byte) (pkix.Extension, error) {
		return attest.HardwareModuleNameSAN(hwType, serial, attest.SANs{}, false)
	}
	roots := rootPool(l)
	serialDir := t.TempDir()
	var ports []string
	devices := map[string]*factory.Device{}
	for i, b := range []struct {
		id    string
		maker *tpmtest.Maker
	}{{"tpm-good", trusted}, {"tpm-other", other}} {
		sw := tpmtest.Start(t, tpmtest.ManufacturedBy(b.maker))
		state := filepath.Join(t.TempDir(), "state")
		ks, err := keys.Open("tpm:"+sw.Addr(), state)
		if err != nil {
			t.Fatal(err)
		}
		att, ok := ks.(factory.Attester)
		if !ok {
			t.Fatalf("the tpm key store %T is not a factory.Attester", ks)
		}
		d := &factory.Device{ID: b.id, Keys: ks, Certs: certstore.Open(state, roots), Attester: att,
			Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
		devices[b.id] = d
		pair := serialtest.Pty(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Serve(ctx, pair.Master) }()
		t.Cleanup(func() { cancel(); <-done })
		name := fmt.Sprintf("slot%d", i+1)
		plug(t, filepath.Join(serialDir, "by-id"), name, pair.TTY)
		ports = append(ports, "by-id/"+name)
	}
	cfg := slotsConfig(serialDir, ports...)
	cfg.ReplyTimeout = 10 * time.Second // TPM key creation and activation on a loaded host
	ev := newEvents(t)
	st, err := line.New(cfg, line.Options{CA: l, Ledger: l, Events: ev, Boards: 2,
		Jig: jig.Options{Roots: roots, Verifier: jig.NewAttestVerifier(&attest.Verifier{Roots: trusted.Pool()}), RequireAttestation: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	y, err := st.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	final := map[string]line.Event{}
	for _, e := range ev.drainWait(ctx, 2) {
		final[e.Slot] = e
	}
	if y.Programmed != 1 || y.Failed["attest:"+attest.ReasonEKUntrusted] != 1 {
		t.Fatalf("yield %+v; events %+v", y, final)
	}
	if e := final["s2"]; e.Type != line.EventFailed || e.Cause != "attest:"+attest.ReasonEKUntrusted || e.Step != jig.StepAttest {
		t.Fatalf("board of the other maker: %+v", e)
	}
	recs, _ := l.Issued("tpm-good")
	if len(recs) != 1 || recs[0].Attestation != station.Attested || recs[0].EKSHA256 == "" {
		t.Fatalf("ledger for tpm-good: %+v", recs)
	}
	chain, err := devices["tpm-good"].Certs.Load()
	if err != nil {
		t.Fatal(err)
	}
	if hwType, _, ok, err := attest.ParseHardwareModuleName(chain.Leaf); err != nil || !ok || !hwType.Equal(attest.HWTypeTPM2) {
		t.Fatalf("HardwareModuleName of tpm-good: %v %v %v", hwType, ok, err)
	}
	if r, _ := l.Refused("tpm-other"); len(r) != 1 || r[0].Attestation != station.RefusedPrefix+attest.ReasonEKUntrusted {
		t.Fatalf("refusal of tpm-other: %+v", r)
	}
}
