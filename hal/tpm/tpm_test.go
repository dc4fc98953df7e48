package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"devid/hal/hosttest"
	"devid/hal/tpm/tpmtest"
)

func openT(t testing.TB, addr string, opts ...Option) *TPM {
	t.Helper()
	tp, err := Open(context.Background(), addr, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", addr, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// newKey creates a P-256 key in tp and loads it.
func newKey(t testing.TB, tp *TPM) *Key {
	t.Helper()
	return newKeyCurve(t, tp, elliptic.P256())
}

// newKeyCurve creates a key on curve in tp and loads it.
func newKeyCurve(t testing.TB, tp *TPM, curve elliptic.Curve) *Key {
	t.Helper()
	b, err := tp.CreateKeyCurve(context.Background(), curve)
	if err != nil {
		t.Fatalf("CreateKeyCurve(%s): %v", curve.Params().Name, err)
	}
	k, err := tp.LoadKey(context.Background(), b)
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	return k
}

func signVerify(t *testing.T, k *Key, h crypto.Hash) {
	t.Helper()
	hh := h.New()
	hh.Write([]byte("devid"))
	d := hh.Sum(nil)
	sig, err := k.Sign(nil, d, h)
	if err != nil {
		t.Fatalf("Sign(%v): %v", h, err)
	}
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d, sig) {
		t.Fatalf("Sign(%v): signature does not verify", h)
	}
}

func TestCreateLoadSign(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		tcp  bool
		opts []Option
	}{
		{"unix/CreateLoaded", false, nil},
		{"tcp/Create+Load", true, []Option{WithoutCreateLoaded()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var sw *tpmtest.SWTPM
			if tc.tcp {
				sw = tpmtest.Start(t, tpmtest.TCP())
			} else {
				sw = tpmtest.Start(t)
			}
			tp := openT(t, sw.Addr(), tc.opts...)
			if !tc.tcp && !tp.Caps().CreateLoaded {
				t.Errorf("swtpm implements CreateLoaded, probe says %+v", tp.Caps())
			}
			if tp.Caps().Manufacturer != "IBM" {
				t.Errorf("manufacturer %q, want swtpm's %q", tp.Caps().Manufacturer, "IBM")
			}
			k := newKey(t, tp)
			for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512, crypto.SHA1} {
				signVerify(t, k, h)
			}
			if _, err := k.Sign(nil, make([]byte, 20), crypto.SHA256); err == nil {
				t.Error("Sign accepted a 20-byte digest for SHA-256")
			}
			if _, err := k.Sign(nil, make([]byte, 16), crypto.MD5); !errors.Is(err, ErrHashUnsupported) {
				t.Errorf("Sign(MD5) = %v, want ErrHashUnsupported", err)
			}
			// Nothing stays loaded between operations: slots are scarce.
			if hs, err := tp.Transient(context.Background()); err != nil || len(hs) != 0 {
				t.Errorf("transient handles %x (err %v), want none", hs, err)
			}
			if err := k.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAttributesFromOutside checks with tpm2-tools, not our own parser,
// that the key cannot leave the TPM.
func TestAttributesFromOutside(t *testing.T) {
	t.Parallel()
	hosttest.LookPath(t, hosttest.TPM2Tools, "tpm2_readpublic")
	sw := tpmtest.Start(t)
	tp := openT(t, sw.Addr())
	k := newKey(t, tp)
	var h uint32
	err := tp.Do(context.Background(), func(tr transport.TPM) error {
		hh, err := k.loadLocked(tr)
		h = uint32(hh)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Our transport connects per command, so no connection is open now
	// and swtpm (one client at a time) will serve tpm2-tools.
	out, err := exec.Command("tpm2_readpublic", "-c", "0x"+hexU32(h), "--tcti", sw.TCTI()).Output()
	if err != nil {
		t.Fatalf("tpm2_readpublic: %v\n%s", err, out)
	}
	attrs := field(string(out), "attributes:")
	if attrs != "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign" {
		t.Errorf("attributes %q, want fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign\n%s", attrs, out)
	}
	if c := field(string(out), "curve-id:"); c != "NIST p256" {
		t.Errorf("curve %q, want NIST p256", c)
	}
	signVerify(t, k, crypto.SHA256)
}

func hexU32(v uint32) string {
	const digits = "0123456789abcdef"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// field returns the "value:" line that follows the line header in
// tpm2-tools' YAML output.
func field(out, header string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) == header && i+1 < len(lines) {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i+1]), "value:"))
		}
	}
	return ""
}

// TestSurvivesRestart power-cycles the TPM: the blob made before loads
// after, and signs with the same public key.
func TestSurvivesRestart(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	tp := openT(t, sw.Addr()) // closed early below; Close is idempotent
	b, err := tp.CreateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pem, err := b.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	tp.Close()
	sw.Restart()

	b2, err := ParseBlobPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	tp2 := openT(t, sw.Addr())
	k, err := tp2.LoadKey(context.Background(), b2)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := b.publicKey()
	if !k.Public().(*ecdsa.PublicKey).Equal(want) {
		t.Fatal("public key changed across restart")
	}
	signVerify(t, k, crypto.SHA256)
}

// TestFlushLeftovers fills the TPM's object slots from outside (tpm2-tools
// without a resource manager leaves its objects loaded, as a crashed
// process would) and checks Open frees them.
func TestFlushLeftovers(t *testing.T) {
	t.Parallel()
	hosttest.LookPath(t, hosttest.TPM2Tools, "tpm2_createprimary")
	sw := tpmtest.Start(t)
	for i := 0; i < 3; i++ {
		ctx := filepath.Join(sw.Dir, "p.ctx")
		if out, err := exec.Command("tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc256", "-c", ctx, "--tcti", sw.TCTI()).CombinedOutput(); err != nil {
			t.Fatalf("tpm2_createprimary: %v\n%s", err, out)
		}
	}
	probe, err := Open(context.Background(), sw.Addr(), WithoutFlush())
	if err != nil {
		t.Fatal(err)
	}
	hs, err := probe.Transient(context.Background())
	probe.Close()
	if err != nil || len(hs) != 3 {
		t.Fatalf("setup: %d transient handles (err %v), want 3", len(hs), err)
	}
	if _, err := probe.CreateKey(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("CreateKey after Close = %v, want ErrClosed", err)
	}

	tp := openT(t, sw.Addr())
	if hs, _ := tp.Transient(context.Background()); len(hs) != 0 {
		t.Fatalf("after Open, transient handles %x", hs)
	}
	// With the slots free, key creation works.
	newKey(t, tp)
}

// countingConn records how many round trips run at once.
type countingConn struct {
	conn
	inFlight, max atomic.Int32
}

func (c *countingConn) roundTrip(cmd []byte, timeout time.Duration) ([]byte, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		m := c.max.Load()
		if n <= m || c.max.CompareAndSwap(m, n) {
			break
		}
	}
	return c.conn.roundTrip(cmd, timeout)
}

func TestConcurrentSignSerialised(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	tp := openT(t, sw.Addr())
	cc := &countingConn{conn: tp.conn}
	tp.conn = cc
	k1, k2 := newKey(t, tp), newKey(t, tp)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		k := k1
		if i%2 == 1 {
			k = k2
		}
		wg.Go(func() {
			for j := 0; j < 5; j++ {
				d := sha256.Sum256([]byte{byte(i), byte(j)})
				sig, err := k.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
					errs <- errors.New("bad signature")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := cc.max.Load(); m != 1 {
		t.Errorf("%d TPM commands ran at once, want 1", m)
	}
}

// TestReload: a saved context that holds the wrong object (as after a
// mix-up) or no longer loads (TPM reset) makes Sign reload from the blob.
func TestReload(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	tp := openT(t, sw.Addr())
	var ks []*Key
	for range 2 {
		k := newKey(t, tp)
		ks = append(ks, k)
	}
	ks[0].saved = ks[1].saved // the wrong key behind the context
	signVerify(t, ks[0], crypto.SHA256)
	sw.Restart()
	signVerify(t, ks[0], crypto.SHA384)
	signVerify(t, ks[1], crypto.SHA256)
	if hs, _ := tp.Transient(context.Background()); len(hs) != 0 {
		t.Errorf("transient handles %x left after signing", hs)
	}
}

// silentTPM accepts connections and reads commands but never answers,
// like a wedged TPM.
func silentTPM(t *testing.T) string {
	return serveUnix(t, "wedged", func(c net.Conn) {
		go func() { io.Copy(io.Discard, c); c.Close() }()
	})
}

// serveUnix listens on a fresh unix socket (in os.TempDir: t.TempDir can
// exceed the socket path limit) and passes each connection to serve, one
// at a time, until the test ends. It returns the socket path.
func serveUnix(t *testing.T, name string, serve func(net.Conn)) string {
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "s")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			serve(c)
		}
	}()
	return p
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	p := silentTPM(t)
	_, err := Open(context.Background(), "unix:"+p, WithTimeouts(Timeouts{Other: 50 * time.Millisecond}))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Open on a wedged TPM = %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err = Open(ctx, "unix:"+p)
	if !errors.Is(err, ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open with a short ctx = %v, want a timeout", err)
	}
}

// proxy forwards each command to swtpm at target, unless answer returns
// a response for it first.
func proxy(t *testing.T, target string, answer func(cmd []byte) []byte) string {
	return serveUnix(t, "proxy", func(c net.Conn) {
		defer c.Close()
		cmd, err := readFrame(c)
		if err != nil {
			return
		}
		if rsp := answer(cmd); rsp != nil {
			c.Write(rsp)
			return
		}
		if rsp, err := forward(target, cmd); err == nil {
			c.Write(rsp)
		}
	})
}

// forward sends cmd to swtpm's data socket at target and returns the
// response.
func forward(target string, cmd []byte) ([]byte, error) {
	c, err := net.Dial("unix", target)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write(cmd); err != nil {
		return nil, err
	}
	return readFrame(c)
}

// errResponse is a bare TPM error response with code rc.
func errResponse(rc uint32) []byte {
	rsp := make([]byte, 10)
	binary.BigEndian.PutUint16(rsp, 0x8001)
	binary.BigEndian.PutUint32(rsp[2:], 10)
	binary.BigEndian.PutUint32(rsp[6:], rc)
	return rsp
}

func commandCode(cmd []byte) uint32 { return binary.BigEndian.Uint32(cmd[6:10]) }

// retryProxy answers the first n commands with TPM_RC_RETRY.
func retryProxy(t *testing.T, target string, n int) (string, *atomic.Int32) {
	var seen atomic.Int32
	p := proxy(t, target, func([]byte) []byte {
		if seen.Add(1) <= int32(n) {
			return errResponse(0x922) // TPM_RC_RETRY
		}
		return nil
	})
	return p, &seen
}

// TestCreateLoadedRefused: a TPM that lists CreateLoaded but refuses it
// (TPM_RC_COMMAND_CODE) still gets keys, through Create.
func TestCreateLoadedRefused(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	var refused atomic.Int32
	p := proxy(t, sw.Sock, func(cmd []byte) []byte {
		if commandCode(cmd) == 0x191 { // TPM2_CreateLoaded
			refused.Add(1)
			return errResponse(0x143) // TPM_RC_COMMAND_CODE
		}
		return nil
	})
	tp := openT(t, "unix:"+p)
	for range 2 {
		k := newKey(t, tp)
		signVerify(t, k, crypto.SHA256)
	}
	if refused.Load() != 1 || tp.Caps().CreateLoaded {
		t.Errorf("CreateLoaded tried %d times, caps %+v; want once, then remembered", refused.Load(), tp.Caps())
	}
}

// TestStartup: a TPM that has not been started (TPM_RC_INITIALIZE) gets
// TPM2_Startup, then the probe goes on.
func TestStartup(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	var seen, startups atomic.Int32
	p := proxy(t, sw.Sock, func(cmd []byte) []byte {
		switch {
		case seen.Add(1) == 1:
			return errResponse(0x100) // TPM_RC_INITIALIZE
		case commandCode(cmd) == 0x144: // TPM2_Startup: swtpm is already started
			startups.Add(1)
			return errResponse(0) // TPM_RC_SUCCESS
		}
		return nil
	})
	tp := openT(t, "unix:"+p)
	if n := startups.Load(); n != 1 {
		t.Errorf("%d TPM2_Startup commands, want 1", n)
	}
	if tp.Caps().Manufacturer != "IBM" {
		t.Errorf("manufacturer after startup %q, want %q", tp.Caps().Manufacturer, "IBM")
	}
}

func TestRetryWarning(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	p, retries := retryProxy(t, sw.Sock, 3)
	tp := openT(t, "unix:"+p)
	if retries.Load() < 4 {
		t.Fatalf("proxy saw %d commands", retries.Load())
	}
	if !tp.Caps().CreateLoaded {
		t.Error("probe after retries lost CreateLoaded")
	}
}

func TestEKDeviceID(t *testing.T) {
	t.Parallel()
	t.Run("manufactured", func(t *testing.T) {
		t.Parallel()
		sw := tpmtest.Start(t, tpmtest.Manufactured())
		tp := openT(t, sw.Addr())
		ek, err := tp.EK(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ek.Cert == nil || ek.Source != "rsa-cert" {
			t.Fatalf("EK source %q cert %v, want swtpm_setup's RSA EK certificate", ek.Source, ek.Cert != nil)
		}
		id, err := tp.EKDeviceID(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want, _ := DeviceIDFromPublic(ek.Cert.PublicKey)
		if id != want || len(id) != 32 {
			t.Errorf("EKDeviceID %q, want %q", id, want)
		}
	})
	t.Run("template", func(t *testing.T) {
		t.Parallel()
		sw := tpmtest.Start(t)
		tp := openT(t, sw.Addr()) // closed early below; Close is idempotent
		id1, err := tp.EKDeviceID(context.Background())
		tp.Close()
		if err != nil {
			t.Fatal(err)
		}
		sw.Restart()
		tp2 := openT(t, sw.Addr())
		ek, err := tp2.EK(context.Background())
		if err != nil || ek.Source != "ecc-template" {
			t.Fatalf("EK source %v err %v, want ecc-template", ek, err)
		}
		id2, _ := DeviceIDFromPublic(ek.Public)
		if id1 != id2 {
			t.Errorf("EK device ID changed across restart: %s -> %s", id1, id2)
		}
		if hs, _ := tp2.Transient(context.Background()); len(hs) != 0 {
			t.Errorf("EK left transient handles %x", hs)
		}
	})
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	regular := filepath.Join(dir, "f")
	os.WriteFile(regular, nil, 0o600)
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"/nonexistent/tpmrm0", ErrNotFound},
		{regular, ErrBadAddress},
		{"unix:" + filepath.Join(dir, "nosock"), ErrNotFound},
		{"tcp:nohostport", ErrBadAddress},
		{"tpm0", ErrBadAddress},
		{"unix:", ErrBadAddress},
	} {
		_, err := Open(context.Background(), tc.addr)
		if !errors.Is(err, tc.want) {
			t.Errorf("Open(%q) = %v, want %v", tc.addr, err, tc.want)
		}
	}
}

func TestParseAddress(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Address{
		"":                   {Kind: "auto"},
		"auto":               {Kind: "auto"},
		"/dev/tpmrm0":        {Kind: "device", Path: "/dev/tpmrm0"},
		"unix:/run/tpm.sock": {Kind: "unix", Path: "/run/tpm.sock"},
		"tcp:127.0.0.1:2321": {Kind: "tcp", Path: "127.0.0.1:2321"},
		"tcp:[::1]:2321":     {Kind: "tcp", Path: "[::1]:2321"},
	} {
		got, err := ParseAddress(in)
		if err != nil || got != want {
			t.Errorf("ParseAddress(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if in != "" && in != "auto" && got.String() != in {
			t.Errorf("ParseAddress(%q).String() = %q", in, got.String())
		}
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"", "auto", "/dev/tpm0", "unix:/x", "tcp:127.0.0.1:1", "tcp:", "unix:", "x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if !errors.Is(err, ErrBadAddress) {
				t.Fatalf("error %v does not wrap ErrBadAddress", err)
			}
			return
		}
		if a.Kind != "auto" {
			b, err := ParseAddress(a.String())
			if err != nil || b != a {
				t.Fatalf("round trip %q -> %+v -> %+v, %v", s, a, b, err)
			}
		}
	})
}

func TestBlobPEM(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	tp := openT(t, sw.Addr())
	b, err := tp.CreateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pem, err := b.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseBlobPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Public, b.Public) || !bytes.Equal(got.Private, b.Private) {
		t.Fatal("PEM round trip changed the blob")
	}
	if os.Getenv("DEVID_UPDATE_TESTDATA") != "" {
		os.WriteFile(filepath.Join("testdata", "key.pem"), pem, 0o644)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"wrongtype": bytes.Replace(pem, []byte("TSS2 PRIVATE KEY"), []byte("EC PRIVATE KEY"), 2),
		"trailing":  append(append([]byte{}, pem...), "junk"...),
		"truncated": pem[:len(pem)/2],
	} {
		if _, err := ParseBlobPEM(bad); !errors.Is(err, ErrBadBlob) {
			t.Errorf("%s: ParseBlobPEM = %v, want ErrBadBlob", name, err)
		}
	}
}

func FuzzParseBlobPEM(f *testing.F) {
	if seed, err := os.ReadFile(filepath.Join("testdata", "key.pem")); err == nil {
		f.Add(seed)
	}
	f.Add([]byte("-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBlobPEM(data)
		if err != nil {
			if !errors.Is(err, ErrBadBlob) {
				t.Fatalf("error %v does not wrap ErrBadBlob", err)
			}
			return
		}
		out, err := b.MarshalPEM()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseBlobPEM(out); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
