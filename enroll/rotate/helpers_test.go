package rotate

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/credential"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
	"devid/hal/atomicfile"
)

// testCA is a throwaway issuing CA with a settable clock, standing in for
// the factory CA / EST server / DPS issuance in unit tests.
type testCA struct {
	mu      sync.Mutex
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	life    time.Duration
	now     func() time.Time
	refuse  error // when set, Issue fails with it
	serial  int64
	issued  int
	pathTag string
	cn      string // when set, issue for this CN whatever the CSR says
}

func newTestCA(t testing.TB, now func() time.Time, life time.Duration) *testCA {
	t.Helper()
	k := pkitest.Key()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rotate test CA"},
		NotBefore: now().Add(-time.Hour), NotAfter: now().Add(20 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{cert: c, key: k, life: life, now: now, serial: 100, pathTag: "test-ca"}
}

func (ca *testCA) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *testCA) sign(pub crypto.PublicKey, cn string) (*x509.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.serial++
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(ca.life),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (ca *testCA) Name() string { return ca.pathTag }

func (ca *testCA) Issue(_ context.Context, req IssueRequest) ([]*x509.Certificate, error) {
	ca.mu.Lock()
	refuse := ca.refuse
	ca.mu.Unlock()
	if refuse != nil {
		return nil, refuse
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	cn := csr.Subject.CommonName
	if ca.cn != "" {
		cn = ca.cn
	}
	leaf, err := ca.sign(csr.PublicKey, cn)
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	ca.issued++
	ca.mu.Unlock()
	return []*x509.Certificate{leaf}, nil
}

// save writes the CA to dir so a helper process can load it.
func (ca *testCA) save(t testing.TB, dir string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), certstore.EncodePEM(ca.cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func loadTestCA(dir string, now func() time.Time, life time.Duration) (*testCA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, errors.New("bad CA files")
	}
	c, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kp.Bytes)
	if err != nil {
		return nil, err
	}
	return &testCA{cert: c, key: k.(*ecdsa.PrivateKey), life: life, now: now, serial: time.Now().UnixNano(), pathTag: "test-ca"}, nil
}

// hubProbe is a TLS server (the hub stand-in) that accepts a client only
// if its chain verifies to the CA at the CA's clock. It runs over
// net.Pipe so that it also works inside a synctest bubble.
func hubProbe(ca *testCA) Probe {
	return func(ctx context.Context, cand credential.Credential) error {
		return handshake(ca, cand)
	}
}

var serverCert struct {
	once  sync.Once
	cert  tls.Certificate
	roots *x509.CertPool // the client's trust: the self-signed cert itself
}

func handshake(ca *testCA, cand credential.Credential) error {
	serverCert.once.Do(func() {
		k := pkitest.Key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "hub"}, DNSNames: []string{"hub.test"},
			NotBefore: time.Unix(0, 0), NotAfter: time.Date(9000, 1, 1, 0, 0, 0, 0, time.UTC), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		serverCert.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
		leaf, _ := x509.ParseCertificate(der)
		serverCert.roots = x509.NewCertPool()
		serverCert.roots.AddCert(leaf)
	})
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	now := ca.now
	srv := tls.Server(s, &tls.Config{
		Certificates: []tls.Certificate{serverCert.cert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: ca.roots(), Time: now, MinVersion: tls.VersionTLS12,
	})
	cli := tls.Client(c, &tls.Config{
		ServerName: "hub.test", RootCAs: serverCert.roots, Certificates: []tls.Certificate{cand.TLSCertificate()}, Time: now,
		MinVersion: tls.VersionTLS12,
	})
	errc := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			// TLS 1.3 client certs are checked after the client's
			// handshake returns; read to surface a rejection.
			_, err = srv.Write([]byte{1})
		}
		errc <- err
		s.Close()
	}()
	cerr := cli.Handshake()
	if cerr == nil {
		_, cerr = cli.Read(make([]byte, 1))
	}
	serr := <-errc
	if serr != nil {
		return fmt.Errorf("hub refused: %w", serr)
	}
	return cerr
}

// provision makes a state dir with a file key and a CA-issued chain.
func provision(t testing.TB, dir string, ca *testCA) Slot {
	t.Helper()
	return provisionSpec(t, dir, ca, "file:"+filepath.Join(dir, keys.DefaultKeyFile))
}

// provisionSpec is provision with the key in the store spec names.
func provisionSpec(t testing.TB, dir string, ca *testCA, spec string) Slot {
	t.Helper()
	if err := atomicfile.EnsurePrivateDir(dir); err != nil {
		t.Fatal(err)
	}
	slot := Slot{KeySpec: spec, ChainPath: filepath.Join(dir, certstore.ChainFile)}
	st, err := keys.Open(slot.KeySpec, dir)
	if err != nil {
		t.Fatal(err)
	}
	k, err := st.Create()
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close(k)
	leaf, err := ca.sign(k.Public(), "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(slot.ChainPath, certstore.EncodePEM(leaf), 0o600); err != nil {
		t.Fatal(err)
	}
	return slot
}
