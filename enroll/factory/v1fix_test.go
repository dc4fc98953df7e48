package factory_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/csr"
	"devid/enroll/factory"
	"devid/enroll/factory/factorytest"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// failingKeys is a key store whose Load fails with a long error (a
// backend that reports a long path or a TPM response code text).
type failingKeys struct{ msg string }

func (f failingKeys) Name() string              { return "file" }
func (f failingKeys) Load() (keys.Key, error)   { return nil, errors.New(f.msg) }
func (f failingKeys) Create() (keys.Key, error) { return nil, errors.New(f.msg) }
func (f failingKeys) Destroy() error            { return nil }

// upload sends INSTALL BEGIN, DATA... and COMMIT for chainPEM and returns
// the COMMIT reply (every reply checked by ask to fit).
func upload(t *testing.T, d *factory.Device, seq *int, chainPEM []byte) []string {
	t.Helper()
	sum := sha256hex(chainPEM)
	if r := ask(t, d, next(seq), "INSTALL", "BEGIN", strconv.Itoa(len(chainPEM)), sum); r[0] != "OK" {
		t.Fatalf("INSTALL BEGIN: %q", r)
	}
	for off := 0; off < len(chainPEM); off += factory.Chunk {
		end := min(off+factory.Chunk, len(chainPEM))
		if r := ask(t, d, next(seq), "INSTALL", "DATA", strconv.Itoa(off), base64.StdEncoding.EncodeToString(chainPEM[off:end])); r[0] != "OK" {
			t.Fatalf("INSTALL DATA %d: %q", off, r)
		}
	}
	return ask(t, d, next(seq), "INSTALL", "COMMIT")
}

// next returns *seq and advances it: every request a new one, so that
// none is taken for a retransmission.
func next(seq *int) int { *seq++; return *seq - 1 }

// csrKey runs CSR and READ and returns the CSR's public key.
func csrKey(t *testing.T, d *factory.Device, seq *int) any {
	t.Helper()
	r := ask(t, d, next(seq), "CSR")
	if r[0] != "OK" {
		t.Fatalf("CSR: %q", r)
	}
	size, _ := strconv.Atoi(strings.TrimPrefix(r[2], "size="))
	var der []byte
	for len(der) < size {
		r := ask(t, d, next(seq), "READ", strconv.Itoa(len(der)))
		b, err := base64.StdEncoding.DecodeString(r[3])
		if r[0] != "OK" || err != nil {
			t.Fatalf("READ: %q", r)
		}
		der = append(der, b...)
	}
	req, err := csr.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	return req.PublicKey
}

// TestEveryReplyFits walks a device with the longest device ID (128
// characters) and CAs with long names through every reply kind and every
// state: each reply fits MaxLine, and none is the "reply too long"
// fallback that would hide what the device meant to say.
func TestEveryReplyFits(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("board-", 21) + "xy" // 128 characters
	long := strings.Repeat("Example Manufacturing Factory Line Certificate Authority ", 3)
	good, other := pkitest.NewCA(long), pkitest.NewCA("Untrusted "+long)
	state := filepath.Join(t.TempDir(), strings.Repeat("deep-directory-name/", 8), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, good.Pool()), Log: slog.New(slog.DiscardHandler),
		Attester: &fakeAttester{}}
	n := factory.MaxSeq - 900 // six digits, the longest sequence number
	seq := &n
	okReply := func(what string, r []string) {
		t.Helper()
		if r[0] != "OK" {
			t.Fatalf("%s: %q, want OK", what, r)
		}
	}
	status := func(want factory.State) []string {
		t.Helper()
		r := ask(t, d, next(seq), "STATUS")
		okReply("STATUS", r)
		if !strings.Contains(strings.Join(r, " "), "state="+string(want)) {
			t.Fatalf("STATUS %q, want state=%s", r, want)
		}
		return r
	}
	okReply("HELLO", ask(t, d, next(seq), "HELLO"))
	status(factory.StateBlank)
	pub := csrKey(t, d, seq)
	status(factory.StateKeyed)
	okReply("ATTEST", ask(t, d, next(seq), "ATTEST", nonceHex))
	okReply("ATTEST READ", ask(t, d, next(seq), "ATTEST", "READ", "0"))

	// A chain from a CA with a long name that the device does not trust.
	bad := certstore.EncodePEM(other.Leaf(pub, id, nil), other.Issuer)
	r := upload(t, d, seq, bad)
	if len(r) < 3 || r[0] != "NAK" || r[1] != factory.ReasonCert || r[2] != string(certstore.ReasonUntrusted) {
		t.Fatalf("untrusted chain: %q", r)
	}
	chainPEM := certstore.EncodePEM(good.Leaf(pub, id, nil), good.Issuer)
	okReply("INSTALL COMMIT", upload(t, d, seq, chainPEM))
	status(factory.StateProgrammed)
	okReply("CHAIN", ask(t, d, next(seq), "CHAIN"))
	okReply("CHAIN READ", ask(t, d, next(seq), "CHAIN", "READ", "0"))

	// inconsistent: a chain with the longest serial (20 bytes) for another key.
	sn := new(big.Int).SetBytes(bytes.Repeat([]byte{0x7f}, 20))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, good.Issuer, pkitest.Key().Public(), good.IssuerKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Certs.Path(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := status(factory.StateInconsistent); !strings.Contains(strings.Join(r, " "), "serial="+strings.Repeat("7f", 20)) {
		t.Fatalf("STATUS dropped the serial: %q", r)
	}
	if r := ask(t, d, next(seq), "HELLO"); r[0] != "OK" || !strings.Contains(strings.Join(r, " "), "id="+id+" ") ||
		!strings.Contains(strings.Join(r, " "), "attest=1") {
		t.Fatalf("HELLO with the longest ID: %q", r)
	}
	// error: a chain file that does not parse, under a long path.
	if err := os.WriteFile(d.Certs.Path(), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := status(factory.StateError); !strings.Contains(strings.Join(r, " "), "detail=") {
		t.Fatalf("STATUS in the error state has no detail: %q", r)
	}
	tok := ask(t, d, next(seq), "RESET")
	okReply("RESET", tok)
	okReply("RESET TOKEN", ask(t, d, next(seq), "RESET", strings.TrimPrefix(tok[2], "token=")))

	// NAK internal with a long backend error.
	bd := &factory.Device{ID: id, Keys: failingKeys{"tpm: " + strings.Repeat("TPM_RC_FAILURE (the TPM is in failure mode) ", 8)},
		Certs: certstore.Open(state, good.Pool()), Log: slog.New(slog.DiscardHandler)}
	if r := ask(t, bd, next(seq), "CSR"); r[0] != "NAK" || r[1] != factory.ReasonInternal || r[len(r)-1] == "long" {
		t.Fatalf("CSR on a failing key backend: %q", r)
	}
	if r := ask(t, bd, next(seq), "STATUS"); r[0] != "OK" || !strings.Contains(strings.Join(r, " "), "state=error") {
		t.Fatalf("STATUS on a failing key backend: %q", r)
	}
}

// TestRepeatIsDecidedOnTheParsedRequest: a retransmission whose CRC
// digits are upper case (a jig written in another language) is the same
// request: RESET TOKEN is replayed, not run again against a spent token.
func TestRepeatIsDecidedOnTheParsedRequest(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	one := 1
	csrKey(t, d, &one)
	tok := strings.TrimPrefix(ask(t, d, 2, "RESET")[2], "token=")
	// A sequence number whose frame's CRC has hex letters (a random
	// token gives one without, 10/16 per digit, often enough to matter).
	var req, upper []byte
	for seq := 3; seq < 100 && bytes.Equal(upper, req); seq++ {
		req = bytes.TrimSpace(factory.Encode(seq, "RESET", tok))
		i := bytes.LastIndex(req, []byte(" *"))
		upper = append(append([]byte(nil), req[:i]...), bytes.ToUpper(req[i:])...)
	}
	if bytes.Equal(upper, req) {
		t.Fatal("no sequence number under 100 gives a CRC with letters")
	}
	first := d.Handle(req)
	if again := d.Handle(upper); !bytes.Equal(again, first) || !bytes.Contains(first, []byte("OK RESET done")) {
		t.Fatalf("upper-case CRC retransmission: %q, first reply %q", again, first)
	}
	// A lower-case verb without a CRC repeats the CRC'd request too.
	h := d.Handle(bytes.TrimSpace(factory.Encode(4, "HELLO")))
	if again := d.Handle([]byte("4 hello")); !bytes.Equal(again, h) {
		t.Fatalf("HELLO repeat: %q vs %q", again, h)
	}
	// Other arguments with the same sequence number are a new request.
	if r := ask(t, d, 4, "STATUS"); r[0] != "OK" || r[1] != "STATUS" {
		t.Fatalf("new request with a reused seq: %q", r)
	}
}

// TestOneAdvicePerState: every command that a state refuses names the
// same next step; in "inconsistent" that is RESET, never "send CSR".
func TestOneAdvicePerState(t *testing.T) {
	t.Parallel()
	att := &fakeAttester{}
	for _, tc := range []struct {
		state factory.State
		setup func(t *testing.T, d *factory.Device)
	}{
		{factory.StateBlank, func(*testing.T, *factory.Device) {}},
		{factory.StateInconsistent, func(t *testing.T, d *factory.Device) {
			// programmed, then the key is lost: a certificate without its key
			ca := pkitest.NewCA("advice")
			d.Certs = certstore.Open(filepath.Dir(d.Certs.Path()), ca.Pool())
			seq := 1
			pub := csrKey(t, d, &seq)
			if r := upload(t, d, &seq, certstore.EncodePEM(ca.Leaf(pub, d.ID, nil), ca.Issuer)); r[0] != "OK" {
				t.Fatalf("install: %q", r)
			}
			if err := d.Keys.Destroy(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			d := newAttestDevice(t, att)
			tc.setup(t, d)
			want := " " + strings.Join(factory.Advice(tc.state), " ")
			if r := ask(t, d, 10, "STATUS"); !strings.Contains(strings.Join(r, " "), "state="+string(tc.state)) {
				t.Fatalf("STATUS %q", r)
			}
			seq := 100
			replies := map[string][]string{
				"INSTALL COMMIT": upload(t, d, &seq, []byte("x")),
				"ATTEST":         ask(t, d, 12, "ATTEST", nonceHex),
			}
			if tc.state == factory.StateInconsistent {
				replies["CSR"] = ask(t, d, 13, "CSR")
			} else {
				replies["CHAIN"] = ask(t, d, 13, "CHAIN")
			}
			for cmd, r := range replies {
				if r[0] != "NAK" || !strings.HasSuffix(strings.Join(r, " "), want) {
					t.Errorf("%s in state %s: %q, want a NAK ending in %q", cmd, tc.state, r, want)
				}
			}
		})
	}
}

// TestChainReadback: CHAIN announces the installed chain and CHAIN READ
// returns it in chunks; without a chain CHAIN is NAK state, and RESET
// forgets the readout.
func TestChainReadback(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewCA("chain")
	d := newAttestDevice(t, nil)
	d.Certs = certstore.Open(filepath.Dir(d.Certs.Path()), ca.Pool())
	wantNAK(t, ask(t, d, 1, "CHAIN"), factory.ReasonState)
	wantNAK(t, ask(t, d, 2, "CHAIN", "READ", "0"), factory.ReasonState)
	wantNAK(t, ask(t, d, 3, "CHAIN", "WRITE", "0"), factory.ReasonArgs)
	seq := 4
	pub := csrKey(t, d, &seq)
	chainPEM := certstore.EncodePEM(ca.Leaf(pub, d.ID, nil), ca.Issuer)
	if r := upload(t, d, &seq, chainPEM); r[0] != "OK" {
		t.Fatalf("install: %q", r)
	}
	r := ask(t, d, 40, "CHAIN")
	if strings.Join(r, " ") != "OK CHAIN size="+strconv.Itoa(len(chainPEM))+" sha256="+sha256hex(chainPEM) {
		t.Fatalf("CHAIN: %q", r)
	}
	var got []byte
	for s := 41; len(got) < len(chainPEM); s++ {
		r := ask(t, d, s, "CHAIN", "READ", strconv.Itoa(len(got)))
		b, err := base64.StdEncoding.DecodeString(r[len(r)-1])
		if r[0] != "OK" || r[1] != "CHAIN" || r[2] != "DATA" || r[3] != strconv.Itoa(len(got)) || err != nil {
			t.Fatalf("CHAIN READ: %q", r)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, chainPEM) {
		t.Fatal("CHAIN READ returned another chain")
	}
	wantNAK(t, ask(t, d, 50, "CHAIN", "READ", strconv.Itoa(len(chainPEM))), factory.ReasonOffset)
	tok := strings.TrimPrefix(ask(t, d, 51, "RESET")[2], "token=")
	ask(t, d, 52, "RESET", tok)
	wantNAK(t, ask(t, d, 53, "CHAIN", "READ", "0"), factory.ReasonState)
}

// busKit is a device served on the tty end of a pty, and the master end
// to talk to it frame by frame.
type busKit struct {
	d      *factory.Device
	state  string
	master serial.Port
	r      *factory.LineReader
}

func serveOnPty(t *testing.T, d *factory.Device) *busKit {
	t.Helper()
	pair := serialtest.Pty(t)
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	factorytest.Serve(t, d, p)
	return &busKit{d: d, state: filepath.Dir(d.Certs.Path()), master: pair.Master, r: factory.NewLineReader(pair.Master)}
}

// send writes one request and returns the reply lines for its seq, up to
// and including the OK or NAK.
func (b *busKit) send(t *testing.T, seq int, verb string, args ...string) []string {
	t.Helper()
	if _, err := b.master.Write(factory.Encode(seq, verb, args...)); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for {
		line, err := b.r.Next(context.Background(), time.Now().Add(30*time.Second), 0)
		if err != nil {
			t.Fatalf("%s: %v after %q", verb, err, lines)
		}
		f, err := factory.ParseFrame(line)
		if err != nil || f.Seq != seq {
			t.Fatalf("%s: reply %q (%v)", verb, line, err)
		}
		lines = append(lines, f.Verb+" "+strings.Join(f.Args, " "))
		if f.Verb != "BUSY" {
			return lines
		}
	}
}

// TestTempFilesRemovedAtStartAndReset: the temp files a power cut during
// INSTALL COMMIT or key creation leaves are gone once the device serves,
// and RESET removes them again.
func TestTempFilesRemovedAtStartAndReset(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	state := filepath.Dir(d.Certs.Path())
	orphans := func() []string {
		var out []string
		for _, name := range []string{"." + certstore.ChainFile + ".tmp-1234567", "." + keys.DefaultKeyFile + ".tmp-42"} {
			p := filepath.Join(state, name)
			if err := os.MkdirAll(state, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("half a chain"), 0o600); err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	keep := filepath.Join(state, "other.tmp-1") // not ours: left alone
	left := orphans()
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b := serveOnPty(t, d)
	if r := b.send(t, 1, "HELLO"); !strings.HasPrefix(r[0], "OK HELLO") {
		t.Fatalf("HELLO: %q", r)
	}
	gone := func(when string, paths []string) {
		t.Helper()
		for _, p := range paths {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s still there (%v)", when, filepath.Base(p), err)
			}
		}
	}
	gone("after start", left)
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file that is not a device temp file was removed: %v", err)
	}
	left = orphans()
	tok := strings.TrimPrefix(strings.Fields(b.send(t, 2, "RESET")[0])[2], "token=")
	if r := b.send(t, 3, "RESET", tok); !strings.HasPrefix(r[len(r)-1], "OK RESET done") {
		t.Fatalf("RESET: %q", r)
	}
	gone("after RESET", left)
}

// slowKeys makes its key only when release is closed: a discrete TPM
// that takes a while.
type slowKeys struct {
	keys.Store
	release chan struct{}
}

func (s slowKeys) Create() (keys.Key, error) {
	<-s.release
	return s.Store.Create()
}

// TestBusyWhileWorking: while CSR waits for the key, the device sends
// "SEQ BUSY" frames for the request, then its reply.
func TestBusyWhileWorking(t *testing.T) {
	t.Parallel()
	d := newAttestDevice(t, nil)
	release := make(chan struct{})
	d.Keys = slowKeys{d.Keys, release}
	d.BusyInterval = 20 * time.Millisecond
	b := serveOnPty(t, d)
	if _, err := b.master.Write(factory.Encode(7, "CSR")); err != nil {
		t.Fatal(err)
	}
	busy := 0
	for {
		line, err := b.r.Next(context.Background(), time.Now().Add(30*time.Second), 0)
		if err != nil {
			t.Fatal(err)
		}
		f, err := factory.ParseFrame(line)
		if err != nil || f.Seq != 7 {
			t.Fatalf("reply %q (%v)", line, err)
		}
		if f.Verb == "BUSY" {
			if busy++; busy == 3 {
				close(release)
			}
			continue
		}
		if f.Verb != "OK" || busy < 3 {
			t.Fatalf("reply %q after %d BUSY frames", line, busy)
		}
		break
	}
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
