package line_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
	"devid/enroll/station"
	"devid/enroll/station/internal/fakeattest"
	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// serveAttester serves a factory device on port whose TPM is att (nil: a
// software key, no attestation offered).
func serveAttester(t *testing.T, port serial.Port, id string, roots *x509.CertPool, att *fakeattest.TPM) {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, roots),
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	if att != nil {
		att.Keys = ks
		d.Attester = att
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, port) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestStationAttestation: a station with a Verifier and attestation
// required programs an attested board, and fails a board whose statement
// is replayed and a board without a TPM, each with cause
// attest:<reason> in the JSON events, the terminal, the page's state and
// the metrics; the ledger records the outcome and the refusals.
func TestStationAttestation(t *testing.T) {
	l := newCA(t)
	l.HardwareModuleNameSAN = fakeattest.HardwareModuleNameSAN
	roots := rootPool(l)
	maker := pkitest.NewCA("tpm maker")
	genuine := func() *fakeattest.TPM {
		return &fakeattest.TPM{EK: maker.Leaf(pkitest.Key().Public(), "ek", nil), Chain: []*x509.Certificate{maker.Issuer}}
	}
	stale := genuine()
	stale.StaleNonce = true
	boards := []struct {
		id    string
		att   *fakeattest.TPM
		cause string
	}{
		{"att-good", genuine(), ""},
		{"att-stale", stale, "attest:nonce"},
		{"att-soft", nil, "attest:" + jig.ReasonNotOffered},
	}
	serialDir := t.TempDir()
	var ports []string
	for i, b := range boards {
		pair := serialtest.Pty(t)
		serveAttester(t, pair.Master, b.id, roots, b.att)
		name := fmt.Sprintf("slot%d", i+1)
		plug(t, filepath.Join(serialDir, "by-id"), name, pair.TTY)
		ports = append(ports, "by-id/"+name)
	}
	ev := newEvents(t)
	term := &syncBuffer{}
	st, err := line.New(slotsConfig(serialDir, ports...), line.Options{CA: l, Ledger: l, Events: ev, Terminal: term, Boards: len(boards),
		Jig: jig.Options{Roots: roots, Verifier: &fakeattest.Verifier{Roots: maker.Pool()}, RequireAttestation: true}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	y, err := st.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if y.Programmed != 1 || y.Failed["attest:nonce"] != 1 || y.Failed["attest:not-offered"] != 1 {
		t.Fatalf("yield %+v", y)
	}
	// JSON events.
	failed := map[string]line.Event{}
	for _, e := range ev.drainWait(ctx, len(boards)) {
		failed[e.Slot] = e
	}
	for i, b := range boards {
		e := failed[fmt.Sprintf("s%d", i+1)]
		if b.cause == "" {
			if e.Type != line.EventProgrammed || e.DeviceID != b.id {
				t.Errorf("%s: final event %+v, want programmed", b.id, e)
			}
			continue
		}
		if e.Type != line.EventFailed || e.Cause != b.cause || e.Step != jig.StepAttest {
			t.Errorf("%s: final event %+v, want failed at attest with cause %s", b.id, e, b.cause)
		}
	}
	// The page's state (what /events and /api/state carry).
	srv := httptest.NewServer(st.Handler())
	defer srv.Close()
	get := func(path string) string {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	state := get("/api/state")
	for _, want := range []string{`"cause":"attest:nonce"`, `"cause":"attest:not-offered"`, `"failed":{"attest:nonce":1,"attest:not-offered":1}`} {
		if !strings.Contains(state, want) {
			t.Errorf("/api/state lacks %s:\n%s", want, state)
		}
	}
	metrics := get("/metrics")
	for _, want := range []string{
		`devid_station_boards_failed_total{cause="attest:nonce",step="attest"} 1`,
		`devid_station_boards_failed_total{cause="attest:not-offered",step="attest"} 1`,
		"devid_station_boards_programmed_total 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	out := term.String()
	for _, want := range []string{"cause attest:nonce", "cause attest:not-offered", "programmed att-good"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal lacks %q:\n%s", want, out)
		}
	}
	// The ledger: the attested board's record, the refusals.
	if recs, err := l.Issued("att-good"); err != nil || len(recs) != 1 || recs[0].Attestation != station.Attested || recs[0].EKSHA256 == "" {
		t.Errorf("ledger for att-good: %+v, %v", recs, err)
	}
	if recs, err := l.Refused("att-stale"); err != nil || len(recs) != 1 || recs[0].Attestation != "refused:nonce" {
		t.Errorf("refusals of att-stale: %+v, %v", recs, err)
	}
	if recs, _ := l.Issued("att-soft"); len(recs) != 0 {
		t.Errorf("att-soft was issued: %+v", recs)
	}
}
