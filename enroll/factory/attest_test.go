package factory_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
)

// fakeAttester stands in for the TPM: its statement is nonce-bound
// filler, and Activate "recovers" a secret derived from the challenge.
type fakeAttester struct {
	size                 int   // statement size
	attestErr, actErr    error // returned when set
	attests, activations int
}

func (a *fakeAttester) Attest(_ context.Context, nonce []byte) ([]byte, error) {
	a.attests++
	if a.attestErr != nil {
		return nil, a.attestErr
	}
	st := fmt.Appendf(nil, `{"nonce":"%x","fill":"`, nonce)
	st = append(st, bytes.Repeat([]byte("x"), max(0, a.size-len(st)-2))...)
	return append(st, `"}`...), nil
}

func (a *fakeAttester) Activate(_ context.Context, blob, secret []byte) ([]byte, error) {
	a.activations++
	if a.actErr != nil {
		return nil, a.actErr
	}
	sum := sha256.Sum256(append(append([]byte(nil), blob...), secret...))
	return sum[:16], nil
}

func newAttestDevice(t testing.TB, att factory.Attester) *factory.Device {
	t.Helper()
	ca := pkitest.NewCA("attest")
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	return &factory.Device{ID: "att-1", Keys: ks, Certs: certstore.Open(state, ca.Pool()), Log: slog.New(slog.DiscardHandler), Attester: att}
}

// ask sends one CRC'd request to d and returns the reply's words after
// the sequence number.
func ask(t *testing.T, d *factory.Device, seq int, verb string, args ...string) []string {
	t.Helper()
	resp := d.Handle(bytes.TrimSpace(factory.Encode(seq, verb, args...)))
	if len(resp)-1 > factory.MaxLine {
		t.Fatalf("%s reply is %d bytes: %q", verb, len(resp)-1, resp)
	}
	f, err := factory.ParseFrame(bytes.TrimSuffix(resp, []byte("\n")))
	if err != nil || f.Seq != seq {
		t.Fatalf("%s reply %q: %+v %v", verb, resp, f, err)
	}
	return append([]string{f.Verb}, f.Args...)
}

func wantNAK(t *testing.T, got []string, reason string) {
	t.Helper()
	if len(got) < 2 || got[0] != "NAK" || got[1] != reason {
		t.Fatalf("reply %q, want NAK %s", got, reason)
	}
}

var nonceHex = strings.Repeat("5a", factory.NonceSize)

func TestHelloOffersAttestOnlyWithAttester(t *testing.T) {
	t.Parallel()
	with := strings.Join(ask(t, newAttestDevice(t, &fakeAttester{}), 1, "HELLO"), " ")
	without := strings.Join(ask(t, newAttestDevice(t, nil), 1, "HELLO"), " ")
	if !strings.HasSuffix(with, " attest=1") || strings.Contains(without, "attest") {
		t.Fatalf("HELLO with an Attester %q, without %q", with, without)
	}
}

func TestAttestWithoutAttesterUnsupported(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	ask(t, d, 1, "CSR")
	wantNAK(t, ask(t, d, 2, "ATTEST", nonceHex), factory.ReasonUnsupported)
	wantNAK(t, ask(t, d, 3, "ATTEST", "READ", "0"), factory.ReasonUnsupported)
	wantNAK(t, ask(t, d, 4, "ACTIVATE", "COMMIT"), factory.ReasonUnsupported)
}

// TestAttestAndActivate walks the whole exchange at the Handle level:
// readout of a multi-chunk statement, an upload of the challenge, the
// secret back; retransmitted frames are replayed, not executed again.
func TestAttestAndActivate(t *testing.T) {
	t.Parallel()
	att := &fakeAttester{size: 1000}
	d := newAttestDevice(t, att)
	wantNAK(t, ask(t, d, 1, "ATTEST", nonceHex), factory.ReasonState) // no key yet
	ask(t, d, 2, "CSR")
	wantNAK(t, ask(t, d, 3, "ATTEST", "READ", "0"), factory.ReasonState) // no ATTEST yet
	wantNAK(t, ask(t, d, 4, "ACTIVATE", "BEGIN", "10", "10", strings.Repeat("0", 64)), factory.ReasonState)
	for _, bad := range []string{"5a", nonceHex + "00", strings.Repeat("zz", 32)} {
		wantNAK(t, ask(t, d, 5, "ATTEST", bad), factory.ReasonArgs)
	}

	rep := ask(t, d, 6, "ATTEST", nonceHex)
	again := ask(t, d, 6, "ATTEST", nonceHex) // a retransmission
	if strings.Join(rep, " ") != strings.Join(again, " ") || att.attests != 1 {
		t.Fatalf("retransmitted ATTEST: %q then %q, %d attestations", rep, again, att.attests)
	}
	if len(rep) != 4 || rep[0] != "OK" || rep[1] != "ATTEST" || rep[2] != "size=1000" {
		t.Fatalf("ATTEST reply %q", rep)
	}
	var st []byte
	seq := 7
	for len(st) < 1000 {
		r := ask(t, d, seq, "ATTEST", "READ", strconv.Itoa(len(st)))
		if len(r) != 5 || r[0] != "OK" || r[1] != "ATTEST" || r[2] != "DATA" || r[3] != strconv.Itoa(len(st)) {
			t.Fatalf("ATTEST READ reply %q", r)
		}
		b, err := base64.StdEncoding.DecodeString(r[4])
		if err != nil || len(b) == 0 || len(b) > factory.Chunk {
			t.Fatalf("chunk %q: %v", r[4], err)
		}
		st = append(st, b...)
		seq++
	}
	if sum := sha256.Sum256(st); "sha256="+hex.EncodeToString(sum[:]) != rep[3] || !bytes.Contains(st, []byte(nonceHex)) {
		t.Fatalf("statement %q does not match %s", st, rep[3])
	}
	wantNAK(t, ask(t, d, seq, "ATTEST", "READ", "1000"), factory.ReasonOffset)

	blob, secret := bytes.Repeat([]byte{1}, 70), bytes.Repeat([]byte{2}, 258)
	up := append(append([]byte(nil), blob...), secret...)
	sum := sha256.Sum256(up)
	if r := ask(t, d, 100, "ACTIVATE", "BEGIN", "70", "258", hex.EncodeToString(sum[:])); strings.Join(r, " ") != "OK ACTIVATE BEGIN size=328" {
		t.Fatalf("ACTIVATE BEGIN: %q", r)
	}
	wantNAK(t, ask(t, d, 101, "ACTIVATE", "COMMIT"), factory.ReasonSize) // not all there
	for off, s := 0, 102; off < len(up); off, s = off+factory.Chunk, s+1 {
		chunk := base64.StdEncoding.EncodeToString(up[off:min(off+factory.Chunk, len(up))])
		ask(t, d, s, "ACTIVATE", "DATA", strconv.Itoa(off), chunk)
		// The same chunk again under a new sequence number (its reply was lost
		// and the jig restarted the request) is harmless.
		if r := ask(t, d, s+50, "ACTIVATE", "DATA", strconv.Itoa(off), chunk); r[0] != "OK" {
			t.Fatalf("repeated chunk at %d: %q", off, r)
		}
	}
	wantNAK(t, ask(t, d, 200, "ACTIVATE", "DATA", "5", "QUJD"), factory.ReasonOffset)
	r := ask(t, d, 201, "ACTIVATE", "COMMIT")
	want := sha256.Sum256(up) // what the fake recovers from blob and secret
	if len(r) != 4 || r[2] != "COMMIT" || r[3] != "secret="+base64.StdEncoding.EncodeToString(want[:16]) {
		t.Fatalf("ACTIVATE COMMIT %q", r)
	}
	if r2 := ask(t, d, 201, "ACTIVATE", "COMMIT"); strings.Join(r2, " ") != strings.Join(r, " ") || att.activations != 1 {
		t.Fatalf("retransmitted COMMIT %q, %d activations", r2, att.activations)
	}
	// COMMIT may be repeated as a new request: it activates again.
	if r3 := ask(t, d, 202, "ACTIVATE", "COMMIT"); strings.Join(r3[1:], " ") != strings.Join(r[1:], " ") || att.activations != 2 {
		t.Fatalf("second COMMIT %q, %d activations", r3, att.activations)
	}
	// A wrong digest is refused at COMMIT.
	ask(t, d, 203, "ACTIVATE", "BEGIN", "1", "1", strings.Repeat("0", 64))
	ask(t, d, 204, "ACTIVATE", "DATA", "0", "QUI=")
	wantNAK(t, ask(t, d, 205, "ACTIVATE", "COMMIT"), factory.ReasonDigest)
	for _, bad := range [][]string{{"0", "1", strings.Repeat("0", 64)}, {"2000", "100", strings.Repeat("0", 64)}, {"x", "1", strings.Repeat("0", 64)}} {
		wantNAK(t, ask(t, d, 206, "ACTIVATE", append([]string{"BEGIN"}, bad...)...), factory.ReasonSize)
	}
	// RESET ends the attestation session.
	tok := strings.TrimPrefix(ask(t, d, 300, "RESET")[2], "token=")
	ask(t, d, 301, "RESET", tok)
	wantNAK(t, ask(t, d, 302, "ATTEST", "READ", "0"), factory.ReasonState)
}

func TestAttestFailuresNAKWithCause(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		att           *fakeAttester
		verb          string
		cause         string
		beginActivate bool
	}{
		{"no EK certificate", &fakeAttester{attestErr: fmt.Errorf("read NV 0x1c0000a: %w", factory.ErrNoEKCert)}, "ATTEST", factory.AttestNoEKCert, false},
		{"TPM failure", &fakeAttester{attestErr: errors.New("TPM2_Certify: " + strings.Repeat("very long TPM error ", 20))}, "ATTEST", factory.AttestFailed, false},
		{"oversized statement", &fakeAttester{size: factory.MaxPayload + 1}, "ATTEST", factory.AttestFailed, false},
		{"activation failure", &fakeAttester{actErr: errors.New("TPM_RC_INTEGRITY: credential is for another TPM")}, "ACTIVATE", factory.AttestActivation, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newAttestDevice(t, tc.att)
			ask(t, d, 1, "CSR")
			r := ask(t, d, 2, "ATTEST", nonceHex)
			if tc.beginActivate {
				sum := sha256.Sum256([]byte("AB"))
				ask(t, d, 3, "ACTIVATE", "BEGIN", "1", "1", hex.EncodeToString(sum[:]))
				ask(t, d, 4, "ACTIVATE", "DATA", "0", "QUI=")
				r = ask(t, d, 5, "ACTIVATE", "COMMIT")
			}
			if len(r) < 3 || r[0] != "NAK" || r[1] != factory.ReasonAttest || r[2] != tc.cause {
				t.Fatalf("%s: reply %q, want NAK attest %s", tc.verb, r, tc.cause)
			}
		})
	}
}

// TestAttestRepliesFitMaxLine: the longest attestation requests and their
// replies (long offsets, a long error from the TPM) stay within MaxLine.
func TestAttestRepliesFitMaxLine(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, &fakeAttester{size: factory.MaxPayload})
	ask(t, d, 999990, "CSR")
	ask(t, d, 999991, "ATTEST", nonceHex)
	// The last chunk of a maximal statement at the largest sequence number.
	last := factory.MaxPayload - factory.Chunk
	if r := ask(t, d, 999999, "ATTEST", "READ", strconv.Itoa(last)); r[0] != "OK" {
		t.Fatalf("%q", r)
	}
	sum := sha256.Sum256(make([]byte, factory.MaxActivate))
	ask(t, d, 999999, "ACTIVATE", "BEGIN", "1024", "1024", hex.EncodeToString(sum[:]))
	full := base64.StdEncoding.EncodeToString(make([]byte, factory.Chunk))
	for off := 0; off < factory.MaxActivate-factory.Chunk; off += factory.Chunk {
		ask(t, d, 999990+off%7, "ACTIVATE", "DATA", strconv.Itoa(off), full)
	}
	// HELLO with the longest device ID (128) and attest=1.
	long := newAttestDevice(t, &fakeAttester{})
	long.ID = strings.Repeat("z", 128)
	if r := ask(t, long, 999999, "HELLO"); r[0] != "OK" || r[len(r)-1] != "attest=1" {
		t.Fatalf("HELLO with a 128-character ID: %q", r)
	}
	// A request padded to MaxLine with an echoed offset.
	pad := strings.Repeat("9", factory.MaxLine-len("999999 ATTEST READ  *00000000"))
	line := bytes.TrimSpace(factory.Encode(999999, "ATTEST", "READ", pad))
	if len(line) != factory.MaxLine {
		t.Fatalf("test line is %d bytes", len(line))
	}
	resp := d.Handle(line)
	if len(resp)-1 > factory.MaxLine || !bytes.Contains(resp, []byte(" NAK bad-args ")) {
		t.Fatalf("reply %q (%d bytes)", resp, len(resp)-1)
	}
}

// FuzzHandleAttest is FuzzHandle for a device with an Attester: arbitrary
// ATTEST and ACTIVATE lines never panic, every reply is a valid frame of
// at most MaxLine bytes answering the request's sequence number.
func FuzzHandleAttest(f *testing.F) {
	d := newAttestDevice(f, &fakeAttester{size: 500})
	d.Handle(bytes.TrimSpace(factory.Encode(1, "CSR")))
	sum := sha256.Sum256([]byte("AB"))
	for _, s := range [][]byte{
		factory.Encode(2, "ATTEST", nonceHex), factory.Encode(3, "ATTEST", "READ", "0"), factory.Encode(4, "ATTEST", "READ", "144"),
		factory.Encode(5, "ATTEST", "READ", "-1"), factory.Encode(6, "ATTEST"), factory.Encode(7, "ATTEST", "READ"),
		factory.Encode(8, "ACTIVATE", "BEGIN", "1", "1", hex.EncodeToString(sum[:])), factory.Encode(9, "ACTIVATE", "DATA", "0", "QUI="),
		factory.Encode(10, "ACTIVATE", "COMMIT"), factory.Encode(11, "ACTIVATE", "DATA", "1", "Qg=="), factory.Encode(12, "ACTIVATE", "BEGIN", "2048", "1", "x"),
		factory.Encode(13, "activate"), factory.Encode(14, "ATTEST", strings.Repeat("0", 63)+"g"),
		factory.Encode(999999, "ATTEST", "READ", strings.Repeat("9", factory.MaxLine-29)),
	} {
		f.Add(bytes.TrimSpace(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) { checkHandled(t, d, line) })
}
