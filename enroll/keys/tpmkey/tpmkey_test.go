//go:build !notpm

package tpmkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/keys"
	"devid/hal/tpm"
	"devid/hal/tpm/tpmtest"
)

// openStore opens the "tpm" key store for the TPM at addr in state.
func openStore(t testing.TB, addr, state string) keys.Store {
	t.Helper()
	st, err := keys.Open("tpm:"+addr, state)
	if err != nil {
		t.Fatalf("keys.Open(tpm:%s): %v", addr, err)
	}
	return st
}

// createKey opens the "tpm" key store like openStore and creates its key.
func createKey(t testing.TB, addr, state string) (keys.Store, keys.Key) {
	t.Helper()
	st := openStore(t, addr, state)
	k, err := st.Create()
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return st, k
}

func closeKey(t *testing.T, k keys.Key) {
	t.Helper()
	if c, ok := k.(io.Closer); ok {
		if err := c.Close(); err != nil {
			t.Errorf("close key: %v", err)
		}
	}
}

func TestCreateLoadDestroy(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	state := filepath.Join(t.TempDir(), "state")
	st := openStore(t, sw.Addr(), state)
	if st.Name() != "tpm" {
		t.Fatalf("Name() = %q", st.Name())
	}
	if _, err := st.Load(); !errors.Is(err, keys.ErrNoKey) {
		t.Fatalf("Load before Create = %v, want ErrNoKey", err)
	}
	k, err := st.Create()
	if err != nil {
		t.Fatal(err)
	}
	if k.Backend() != "tpm" {
		t.Errorf("Backend() = %q", k.Backend())
	}
	blob := filepath.Join(state, DefaultBlobFile)
	if fi, err := os.Stat(blob); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("blob %s: mode %v err %v, want 0600", blob, fi.Mode().Perm(), err)
	}
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v err %v, want 0700", fi.Mode().Perm(), err)
	}
	if _, err := st.Create(); !errors.Is(err, keys.ErrKeyExists) {
		t.Errorf("second Create = %v, want ErrKeyExists", err)
	}
	pub := k.Public().(*ecdsa.PublicKey)
	closeKey(t, k)

	// Reboot: the same blob loads on the same TPM and is the same key.
	sw.Restart()
	k2, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !k2.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("key changed across restart")
	}
	d := sha256.Sum256([]byte("x"))
	sig, err := k2.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("sign after restart: %v", err)
	}
	if loc := k2.(*Key).Location(); loc != "tpm "+sw.Addr()+" blob="+blob {
		t.Errorf("Location() = %q", loc)
	}
	closeKey(t, k2)

	if err := st.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(); !errors.Is(err, keys.ErrNoKey) {
		t.Errorf("Load after Destroy = %v, want ErrNoKey", err)
	}
	if err := st.Destroy(); err != nil {
		t.Errorf("second Destroy = %v", err)
	}
}

// TestWrongTPM: a blob from one TPM does not load on another, and the
// error says so instead of making a new key.
func TestWrongTPM(t *testing.T) {
	t.Parallel()
	a, b := tpmtest.Start(t), tpmtest.Start(t)
	state := t.TempDir()
	_, k := createKey(t, a.Addr(), state)
	closeKey(t, k)
	other := openStore(t, b.Addr(), state)
	if _, err := other.Load(); !errors.Is(err, tpm.ErrWrongTPM) {
		t.Fatalf("Load on another TPM = %v, want tpm.ErrWrongTPM", err)
	}
}

// TestStagedSecondKey: rotation holds the current and a staged key at
// once, on one TPM, through one shared connection.
func TestStagedSecondKey(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	state := t.TempDir()
	st, cur := createKey(t, sw.Addr(), state)
	defer closeKey(t, cur)
	staged := st.(*Store).WithBlob(st.(*Store).Path() + ".staged")
	if got := staged.Paths(); len(got) != 1 || got[0] != filepath.Join(state, "device.tpmkey.staged") {
		t.Fatalf("staged Paths() = %v", got)
	}
	next, err := staged.Create()
	if err != nil {
		t.Fatal(err)
	}
	defer closeKey(t, next)
	if cur.Public().(*ecdsa.PublicKey).Equal(next.Public()) {
		t.Fatal("staged key equals the current key")
	}
	if cur.(*Key).Key.TPMAddr() != next.(*Key).Key.TPMAddr() {
		t.Error("keys on different TPM connections")
	}
	for _, k := range []keys.Key{cur, next} {
		d := sha256.Sum256([]byte("rotate"))
		sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
			t.Fatalf("sign: %v", err)
		}
	}
	// Promote: rename the staged blob over the current one; it loads.
	if err := os.Rename(staged.Path(), st.(*Store).Path()); err != nil {
		t.Fatal(err)
	}
	k, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	defer closeKey(t, k)
	if !k.Public().(*ecdsa.PublicKey).Equal(next.Public()) {
		t.Error("promoted blob did not load as the staged key")
	}
}

// TestCSRAndTLS uses the one TPM signer for a CSR and for TLS 1.2 and
// 1.3 client authentication against a real crypto/tls server.
func TestCSRAndTLS(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	_, k := createKey(t, sw.Addr(), t.TempDir())
	defer closeKey(t, k)

	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-0001"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	ca := newCA(t)
	leaf := ca.issue(t, csr.Subject, csr.PublicKey, x509.ExtKeyUsageClientAuth)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvCert := ca.issue(t, pkix.Name{CommonName: "localhost"}, srvKey.Public(), x509.ExtKeyUsageServerAuth)

	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			cn, err := handshake(t, ca, tls.Certificate{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey},
				tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: k}, v)
			if err != nil {
				t.Fatal(err)
			}
			if cn != "dev-0001" {
				t.Errorf("server saw client %q", cn)
			}
		})
	}
}

// handshake runs one mutual-TLS handshake on loopback and returns the
// client certificate's CN as the server verified it.
func handshake(t testing.TB, ca *testCA, srv, cli tls.Certificate, version uint16) (string, error) {
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srv},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err != nil {
		return "", err
	}
	defer l.Close()
	type res struct {
		cn  string
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- res{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- res{err: err}
			return
		}
		done <- res{cn: tc.ConnectionState().PeerCertificates[0].Subject.CommonName}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", l.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{cli},
		RootCAs:      ca.pool,
		ServerName:   "localhost",
		MinVersion:   version,
		MaxVersion:   version,
	})
	if err != nil {
		return "", err
	}
	// TLS 1.3 servers verify the client certificate after the client's
	// handshake returns; a read surfaces the server's verdict.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	conn.Write([]byte{0})
	r := <-done
	conn.Close()
	return r.cn, r.err
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB, subj pkix.Name, pub crypto.PublicKey, eku x509.ExtKeyUsage) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subj,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
	}
	if eku == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// TestAuto covers the "auto" resolution order. It swaps tpm.DevicePaths,
// so it does not run in parallel.
func TestAuto(t *testing.T) {
	old := tpm.DevicePaths
	t.Cleanup(func() { tpm.DevicePaths = old })
	tpm.DevicePaths = []string{filepath.Join(t.TempDir(), "no-tpmrm0")}

	state := t.TempDir()
	st, err := keys.Open("auto", state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Name() != "file" {
		t.Fatalf("auto without a TPM = %q, want file", st.Name())
	}

	// A TPM blob in the state dir wins even when no TPM is visible: the
	// device must not silently switch to a new software key.
	os.WriteFile(DefaultBlobPath(state), []byte("x"), 0o600)
	st, err = keys.Open("auto", state)
	if err != nil || st.Name() != "tpm" {
		t.Fatalf("auto with a blob = %v, %v; want tpm", st, err)
	}
	if _, err := st.Load(); err == nil {
		t.Error("Load of a junk blob succeeded")
	}

	// A software key in the state dir wins over a TPM appearing later.
	state2 := t.TempDir()
	if _, err := keys.Open("file:"+keys.DefaultFilePath(state2), state2); err != nil {
		t.Fatal(err)
	}
	fst, _ := keys.Open("file:", state2)
	if _, err := fst.Create(); err != nil {
		t.Fatal(err)
	}
	// Pretend a TPM exists: any character device will do for Present.
	tpm.DevicePaths = []string{"/dev/null"}
	st, err = keys.Open("auto", state2)
	if err != nil || st.Name() != "file" {
		t.Fatalf("auto with a key file and a TPM = %v, %v; want file", st, err)
	}
	st, err = keys.Open("auto", t.TempDir())
	if err != nil || st.Name() != "tpm" {
		t.Fatalf("auto with a TPM and no key = %v, %v; want tpm", st, err)
	}

	for _, bad := range []string{"auto:x"} {
		if _, err := keys.Open(bad, state); !errors.Is(err, ErrBadSpec) {
			t.Errorf("Open(%q) = %v, want ErrBadSpec", bad, err)
		}
	}
	if _, err := keys.Open("auto", ""); !errors.Is(err, ErrBadSpec) {
		t.Errorf("auto without a state dir = %v", err)
	}
}

func TestParseSpec(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		arg, state string
		want       Spec
		err        bool
	}{
		{"", "/s", Spec{Addr: "", Blob: "/s/device.tpmkey"}, false},
		{"auto", "/s", Spec{Addr: "", Blob: "/s/device.tpmkey"}, false},
		{"/dev/tpmrm0", "/s", Spec{Addr: "/dev/tpmrm0", Blob: "/s/device.tpmkey"}, false},
		{"unix:/run/tpm.sock,blob=next.tpmkey", "/s", Spec{Addr: "unix:/run/tpm.sock", Blob: "/s/next.tpmkey"}, false},
		{"tcp:127.0.0.1:2321,blob=/k/a.tpmkey", "", Spec{Addr: "tcp:127.0.0.1:2321", Blob: "/k/a.tpmkey"}, false},
		{"/dev/tpm0", "", Spec{}, true},
		{"/dev/tpm0,blob=rel", "", Spec{}, true},
		{"/dev/tpm0,handle=0x81000001", "/s", Spec{}, true},
		{"/dev/tpm0,blob", "/s", Spec{}, true},
		{"/dev/tpm0,blob=a,blob=b", "/s", Spec{}, true},
		{"tpm0", "/s", Spec{}, true},
		{"/dev/tpmrm0,curve=p384", "/s", Spec{Addr: "/dev/tpmrm0", Blob: "/s/device.tpmkey", Curve: "p384"}, false},
		{"/dev/tpmrm0,blob=/k/a,curve=P-384", "", Spec{Addr: "/dev/tpmrm0", Blob: "/k/a", Curve: "p384"}, false},
		{"/dev/tpmrm0,curve=p256", "/s", Spec{Addr: "/dev/tpmrm0", Blob: "/s/device.tpmkey"}, false},
		{"/dev/tpmrm0,curve=p521", "/s", Spec{}, true},
		{"tcp:nope", "/s", Spec{}, true},
	} {
		st, err := ParseSpec(tc.arg, tc.state)
		if tc.err {
			if !errors.Is(err, ErrBadSpec) {
				t.Errorf("ParseSpec(%q) = %v, want ErrBadSpec", tc.arg, err)
			}
			continue
		}
		if err != nil || st.Spec() != tc.want {
			t.Errorf("ParseSpec(%q, %q) = %+v, %v; want %+v", tc.arg, tc.state, st, err, tc.want)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"", "auto", "/dev/tpmrm0", "unix:/a,blob=b", "tcp:127.0.0.1:1,blob=/x", ",", "/dev/tpm0,blob=", "x,y=z", "/dev/tpmrm0,curve=p384", ",curve=p256"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		st, err := ParseSpec(arg, "/state")
		if err != nil {
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("error %v does not wrap ErrBadSpec", err)
			}
			return
		}
		sp := st.Spec()
		if !filepath.IsAbs(sp.Blob) {
			t.Fatalf("blob %q is not absolute", sp.Blob)
		}
		again, err := ParseSpec(sp.String()[len("tpm:"):], "/other")
		if err != nil || again.Spec() != sp {
			t.Fatalf("round trip %q -> %q -> %+v, %v", arg, sp.String(), again, err)
		}
	})
}

// TestP384Key: "curve=p384" makes an ECC NIST P-384 key in swtpm that
// signs SHA-384 digests which verify, and that loads back from its blob
// through a spec without the option.
func TestP384Key(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	state := filepath.Join(t.TempDir(), "state")
	st, err := keys.Open("tpm:"+sw.Addr()+",curve=p384", state)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Create()
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().(*ecdsa.PublicKey)
	closeKey(t, k)
	if pub.Curve != elliptic.P384() {
		t.Fatalf("curve %s, want P-384", pub.Curve.Params().Name)
	}
	k2, err := openStore(t, sw.Addr(), state).Load()
	if err != nil {
		t.Fatal(err)
	}
	defer closeKey(t, k2)
	if !pub.Equal(k2.Public()) {
		t.Fatal("loaded key differs")
	}
	d := sha512.Sum384([]byte("x"))
	sig, err := k2.Sign(rand.Reader, d[:], crypto.SHA384)
	if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("P-384 signature: %v", err)
	}
}
