package jig_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/factory/factorytest"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
	"devid/enroll/station/ca"
	"devid/enroll/station/internal/catest"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// device is a factory.Device served on the tty end of a pty, through the
// real tarm/serial port.
type device struct {
	*factory.Device
	state string
}

// startDevice serves a device on tty until the test ends.
func startDevice(t testing.TB, tty, id string, roots *x509.CertPool) *device {
	t.Helper()
	return startDeviceWith(t, tty, id, roots, nil)
}

// startDeviceWith is startDevice with setup, if not nil, applied to the
// device before it serves (an Attester).
func startDeviceWith(t testing.TB, tty, id string, roots *x509.CertPool, setup func(*device)) *device {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{
		Device: &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, roots),
			Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond},
		state: state,
	}
	if setup != nil {
		setup(d)
	}
	p, err := serial.Open(tty, 115200)
	if err != nil {
		t.Fatal(err)
	}
	factorytest.Serve(t, d.Device, p)
	return d
}

// jigOn opens the jig's end of a link at tty, as devid-jig does, until
// the test ends.
func jigOn(t testing.TB, tty string) *jig.Jig {
	t.Helper()
	p, err := serial.Open(tty, 115200)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return jig.New(p)
}

// newCA and rootPool: the shared test CA (enroll/station/internal/catest).
var (
	newCA    = catest.New
	rootPool = catest.RootPool
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkState asserts the device is never half-programmed: the state dir
// holds only the key and, if programmed, a chain that matches it.
func checkState(t *testing.T, d *device) factory.State {
	t.Helper()
	ents, _ := os.ReadDir(d.state)
	for _, e := range ents {
		if e.Name() != keys.DefaultKeyFile && e.Name() != certstore.ChainFile {
			t.Errorf("stray file %s in state dir", e.Name())
		}
	}
	key, kerr := d.Keys.Load()
	chain, cerr := d.Certs.Load()
	switch {
	case kerr != nil && cerr != nil:
		return factory.StateBlank
	case kerr == nil && errors.Is(cerr, certstore.ErrNoChain):
		return factory.StateKeyed
	case kerr == nil && cerr == nil && chain.Matches(key.Public()):
		return factory.StateProgrammed
	}
	t.Fatalf("half-programmed device: key err %v, chain err %v", kerr, cerr)
	return ""
}

func TestProgramOverPty(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	d := startDevice(t, pair.TTY, "board-0001", rootPool(l))
	ctx := testCtx(t)

	var steps []jig.Step
	res, err := jig.Program(ctx, jig.New(pair.Master), l, func(s jig.Step, _ string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []jig.Step{jig.StepHello, jig.StepCSR, jig.StepAttest, jig.StepSign, jig.StepInstall, jig.StepStatus}; fmt.Sprint(steps) != fmt.Sprint(want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	if res.DeviceID != "board-0001" || res.Key != "file" || res.Serial == "" {
		t.Fatalf("result %+v", res)
	}
	chain, err := d.Certs.Load()
	if err != nil || chain.Serial() != res.Serial || !bytes.Equal(chain.PEM, res.ChainPEM) {
		t.Fatalf("stored chain %v, %v", chain, err)
	}
	if checkState(t, d) != factory.StateProgrammed {
		t.Fatal("not programmed")
	}
	key1, _ := d.Keys.Load()

	// Programming again is allowed and keeps the key (repeated CSR: same key).
	res2, err := jig.Program(ctx, jig.New(pair.Master), l, nil)
	if err != nil {
		t.Fatal(err)
	}
	key2, _ := d.Keys.Load()
	if res2.Serial == res.Serial || !key2.Public().(*ecdsa.PublicKey).Equal(key1.Public()) {
		t.Fatal("second run changed the key or reused the serial")
	}
	recs, _ := l.Issued("board-0001")
	if len(recs) != 2 || recs[1].Serial != res2.Serial {
		t.Fatalf("ledger holds %+v", recs)
	}
}

// rawLine writes one line on the master and returns the device's reply.
func rawLine(t *testing.T, m *os.File, rd *bufio.Reader, line string) string {
	t.Helper()
	if _, err := m.WriteString(line); err != nil {
		t.Fatal(err)
	}
	m.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer m.SetReadDeadline(time.Time{})
	reply, err := rd.ReadString('\n')
	if err != nil {
		t.Fatalf("no reply to %q: %v", line, err)
	}
	return strings.TrimSpace(reply)
}

func TestCorruptFramesAreNAKedAndSessionRecovers(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	startDevice(t, pair.TTY, "board-0002", rootPool(l))
	rd := bufio.NewReader(pair.Master)

	good := string(factory.Encode(41, "STATUS"))
	flip := func(s string, i int, bit byte) string { b := []byte(s); b[i] ^= bit; return string(b) }
	cases := []struct {
		name, line, want string
	}{
		{"bit flip in the verb", flip(good, 4, 0x01), "- NAK crc"},
		{"bit flip in the CRC", flip(good, len(good)-3, 0x01), "- NAK crc"},
		{"bit flip in the sequence", flip(good, 0, 0x02), "- NAK crc"},
		{"high bit set", flip(good, 5, 0x80), "- NAK bad-char"},
		{"truncated: CRC cut short", good[:len(good)-4] + "\n", "- NAK syntax"},
		{"truncated: no CRC on CSR", "7 CSR\n", "7 NAK crc-missing"},
		{"garbage", "\x00\x13\xfe\x7fzz\n", "- NAK bad-char"},
		{"over-long line", strings.Repeat("A", 1000) + "\n", "- NAK too-long"},
		{"unknown command", string(factory.Encode(8, "FLASH", "all")), "8 NAK unknown-command"},
		{"wrong arguments", string(factory.Encode(9, "READ")), "9 NAK bad-args"},
		{"DATA before BEGIN", string(factory.Encode(10, "INSTALL", "DATA", "0", "QUJD")), "10 NAK state"},
		{"READ before CSR", string(factory.Encode(11, "READ", "0")), "11 NAK state"},
		{"half a frame, then silence", good[:9], "- NAK timeout"},
	}
	for _, c := range cases {
		if got := rawLine(t, pair.Master, rd, c.line); !strings.HasPrefix(got, c.want+" ") {
			t.Errorf("%s: reply %q, want prefix %q", c.name, got, c.want)
		} else if _, err := factory.ParseFrame([]byte(got)); err != nil {
			t.Errorf("%s: NAK is not a valid frame: %v", c.name, err)
		}
	}
	// A person at a terminal: no CRC on HELLO/STATUS, lowercase, CR LF.
	if got := rawLine(t, pair.Master, rd, "1 hello\r\n"); !strings.HasPrefix(got, "1 OK HELLO proto=1 id=board-0002 ") {
		t.Errorf("typed HELLO: %q", got)
	}
	// The session still works end to end.
	if _, err := jig.Program(testCtx(t), jig.New(pair.Master), l, nil); err != nil {
		t.Fatalf("program after corrupt frames: %v", err)
	}
}

func TestTamperedLinkRecovers(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	link := serialtest.NewLink(t)
	startDevice(t, link.DeviceTTY, "board-0003", rootPool(l))
	p, err := serial.Open(link.JigTTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Flip one bit in a CSR chunk coming back, two in INSTALL chunks going
	// out, and drop one reply entirely (the jig times out and resends; the
	// device replays its reply without executing twice).
	hits := map[string]bool{}
	link.SetTamper(func(dir serialtest.Direction, total int, b []byte) []byte {
		switch {
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK DATA 144 ")) && !hits["data"]:
			hits["data"] = true
			b[len(b)/2] ^= 0x04
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" INSTALL DATA 288 ")) && !hits["install"]:
			hits["install"] = true
			b[len(b)/2] ^= 0x10
		case dir == serialtest.ToDevice && bytes.Contains(b, []byte(" INSTALL DATA 576 ")) && !hits["install2"]:
			hits["install2"] = true
			b[3] ^= 0x80
		case dir == serialtest.ToJig && bytes.Contains(b, []byte(" OK INSTALL DATA have=864 ")) && !hits["drop"]:
			hits["drop"] = true
			return nil
		}
		return b
	})
	j := jig.New(p)
	j.V1Only = true // the offsets above are v1's (v2: v2_test.go)
	j.ReplyTimeout = time.Second
	res, err := jig.Program(testCtx(t), j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"data", "install", "install2", "drop"} {
		if !hits[h] {
			t.Errorf("tamper %q never fired: the test did not exercise it", h)
		}
	}
	if res.Serial == "" {
		t.Fatal("no serial")
	}
}

func TestJigKilledMidTransferNeverHalfProgrammed(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	// Cut the jig at points spread over a whole run (about 2200 bytes go
	// to the device): during HELLO, CSR readout, INSTALL upload and COMMIT.
	for _, cut := range []int{20, 300, 700, 1200, 1800, 2100, 2150} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			t.Parallel()
			link := serialtest.NewLink(t)
			id := fmt.Sprintf("cut-%d", cut)
			d := startDevice(t, link.DeviceTTY, id, rootPool(l))
			ctx, kill := context.WithCancel(testCtx(t))
			link.SetTamper(func(dir serialtest.Direction, total int, b []byte) []byte {
				if dir != serialtest.ToDevice || total+len(b) < cut {
					return b
				}
				kill() // the jig dies: it sends the bytes before the cut, then nothing
				if total >= cut {
					return nil
				}
				return b[:cut-total]
			})
			p, err := serial.Open(link.JigTTY, 115200)
			if err != nil {
				t.Fatal(err)
			}
			_, err = jig.Program(ctx, jig.New(p), l, nil)
			p.Close()
			if err == nil {
				t.Logf("cut at %d came after the run finished", cut)
			}
			link.SetTamper(nil)

			// A new jig run finds a consistent state and finishes the job.
			p, err = serial.Open(link.JigTTY, 115200)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			j := jig.New(p)
			// STATUS first: the device handles frames in order, so its
			// answer means a COMMIT that got through before the cut has
			// finished. Reading the disk before that raced the commit
			// (a temp file seen mid-write under qemu-user).
			s, err := j.Status(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			st := checkState(t, d)
			if s.State != st {
				t.Fatalf("device reports %s, disk says %s", s.State, st)
			}
			if _, err := jig.Program(testCtx(t), j, l, nil); err != nil {
				t.Fatalf("rerun after cut at %d (state %s): %v", cut, st, err)
			}
			if checkState(t, d) != factory.StateProgrammed {
				t.Fatal("rerun did not program the device")
			}
		})
	}
}

// issuerFunc adapts a function to jig.Issuer.
type issuerFunc func(*x509.CertificateRequest) []*x509.Certificate

func (f issuerFunc) Issue(_ context.Context, r *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return f(r), nil
}

func TestBadChainsRefusedOverBus(t *testing.T) {
	t.Parallel()
	factoryCA, foreign := pkitest.NewCA("factory"), pkitest.NewCA("foreign")
	pair := serialtest.Pty(t)
	d := startDevice(t, pair.TTY, "board-0004", factoryCA.Pool())
	cases := []struct {
		name   string
		issue  issuerFunc
		reason certstore.Reason
	}{
		{"other key", func(r *x509.CertificateRequest) []*x509.Certificate {
			return []*x509.Certificate{factoryCA.Leaf(pkitest.Key().Public(), r.Subject.CommonName, nil), factoryCA.Issuer}
		}, certstore.ReasonKeyMismatch},
		{"other CN", func(r *x509.CertificateRequest) []*x509.Certificate {
			return []*x509.Certificate{factoryCA.Leaf(r.PublicKey, "board-9999", nil), factoryCA.Issuer}
		}, certstore.ReasonCNMismatch},
		{"untrusted CA", func(r *x509.CertificateRequest) []*x509.Certificate {
			return []*x509.Certificate{foreign.Leaf(r.PublicKey, r.Subject.CommonName, nil), foreign.Issuer}
		}, certstore.ReasonUntrusted},
		{"expired", func(r *x509.CertificateRequest) []*x509.Certificate {
			return []*x509.Certificate{factoryCA.Leaf(r.PublicKey, r.Subject.CommonName, func(c *x509.Certificate) {
				c.NotBefore, c.NotAfter = time.Now().AddDate(-2, 0, 0), time.Now().Add(-time.Hour)
			}), factoryCA.Issuer}
		}, certstore.ReasonExpired},
	}
	for _, c := range cases {
		_, err := jig.Program(testCtx(t), jig.New(pair.Master), c.issue, nil)
		var nk *jig.NAKError
		var se *jig.StepError
		if !errors.As(err, &nk) || !errors.As(err, &se) || se.Step != jig.StepInstall ||
			nk.Reason != factory.ReasonCert || !strings.HasPrefix(nk.Detail, string(c.reason)+" ") {
			t.Errorf("%s: err = %v, want install NAK cert %s", c.name, err, c.reason)
		}
		if checkState(t, d) != factory.StateKeyed {
			t.Errorf("%s: refused chain changed the store", c.name)
		}
	}
}

func TestResetAndRekeyRules(t *testing.T) {
	t.Parallel()
	l := newCA(t)
	pair := serialtest.Pty(t)
	d := startDevice(t, pair.TTY, "board-0005", rootPool(l))
	ctx := testCtx(t)
	j := jig.New(pair.Master)
	if _, err := jig.Program(ctx, j, l, nil); err != nil {
		t.Fatal(err)
	}
	// RESET needs the token it hands out, in the very next command.
	if _, err := j.Do(ctx, false, "RESET", "deadbeef"); !isNAK(err, factory.ReasonToken) {
		t.Fatalf("RESET with a made-up token: %v", err)
	}
	rep, err := j.Do(ctx, false, "RESET")
	if err != nil || rep.Fields["token"] == "" {
		t.Fatalf("RESET: %v %v", rep, err)
	}
	if _, err := j.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Do(ctx, false, "RESET", rep.Fields["token"]); !isNAK(err, factory.ReasonToken) {
		t.Fatalf("stale token accepted: %v", err)
	}
	if checkState(t, d) != factory.StateProgrammed {
		t.Fatal("refused RESET changed the device")
	}

	// A certificate without its key: CSR must not mint a new key.
	os.Remove(keys.DefaultFilePath(d.state))
	if s, _ := j.Status(ctx); s.State != factory.StateInconsistent {
		t.Fatalf("state %s, want inconsistent", s.State)
	}
	if _, err := j.CSR(ctx); !isNAK(err, factory.ReasonRefused) {
		t.Fatalf("re-key with a certificate present: %v, want NAK refused", err)
	}
	if err := j.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if checkState(t, d) != factory.StateBlank {
		t.Fatal("RESET left something behind")
	}
	// The CA refuses the device ID for a new key until the old one is revoked.
	if _, err := jig.Program(ctx, j, l, nil); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("program with a new key: %v, want ErrIDTaken", err)
	}
	if _, err := l.Revoke("board-0005", "rework"); err != nil {
		t.Fatal(err)
	}
	if _, err := jig.Program(ctx, j, l, nil); err != nil {
		t.Fatal(err)
	}
}

func isNAK(err error, reason string) bool {
	var nk *jig.NAKError
	return errors.As(err, &nk) && nk.Reason == reason
}

// BenchmarkProgramOverPty programs one fresh device per iteration (key
// generation, CSR, local CA with fsynced ledger, install) over a real pty,
// and reports the bytes moved and the time those bytes alone would take at
// 115200 baud 8N1 (11520 bytes/s): a pty has no baud rate.
func BenchmarkProgramOverPty(b *testing.B) {
	l := newCA(b)
	var wire int
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		pair := serialtest.Pty(b)
		startDevice(b, pair.TTY, fmt.Sprintf("bench-%d", i), rootPool(l))
		j := jig.New(pair.Master)
		b.StartTimer()
		res, err := jig.Program(context.Background(), j, l, nil)
		if err != nil {
			b.Fatal(err)
		}
		wire = res.BytesSent + res.BytesReceived
	}
	b.ReportMetric(float64(wire), "wire-bytes/op")
	b.ReportMetric(float64(wire)/11520*1000, "floor-ms@115200/op")
}
