package tpmtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"devid/hal/hosttest"
)

// Maker is a test "TPM maker": a CA that swtpm_setup (through
// swtpm_localca) uses to issue the EK certificates of the TPMs started
// with ManufacturedBy. Its root is self-signed and signs the EK
// certificates directly.
type Maker struct {
	// Root is the maker's CA certificate.
	Root *x509.Certificate
	// Key is the root's private key, for tests that issue EK
	// certificates themselves.
	Key *ecdsa.PrivateKey

	setupConf string // swtpm_setup.conf naming swtpm_localca and its config
}

// NewMaker makes a maker CA (ECC P-256) with its swtpm_setup and
// swtpm-localca configuration in a temporary directory.
func NewMaker(t testing.TB, name string) *Maker {
	t.Helper()
	localca := hosttest.LookPath(t, hosttest.SWTPM, "swtpm_localca")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"devid test TPM maker"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	files := map[string][]byte{
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"root.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"localca.conf": []byte("statedir = " + state + "\n" +
			"signingkey = " + filepath.Join(dir, "key.pem") + "\n" +
			"issuercert = " + filepath.Join(dir, "root.pem") + "\n" +
			"certserial = " + filepath.Join(state, "certserial") + "\n"),
		"localca.options": nil,
		"swtpm_setup.conf": []byte("create_certs_tool = " + localca + "\n" +
			"create_certs_tool_config = " + filepath.Join(dir, "localca.conf") + "\n" +
			"create_certs_tool_options = " + filepath.Join(dir, "localca.options") + "\n" +
			"active_pcr_banks = sha256\n"),
	}
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &Maker{Root: root, Key: key, setupConf: filepath.Join(dir, "swtpm_setup.conf")}
}

// Pool is a certificate pool holding only the maker's root.
func (m *Maker) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Root)
	return p
}
