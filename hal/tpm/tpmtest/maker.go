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
	m, err := WriteMaker(t.TempDir(), name, localca, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// WriteMaker makes a maker CA (ECC P-256, valid for validity) and its
// swtpm_setup and swtpm-localca configuration in dir, for programs that
// manufacture TPMs outside a test (the QEMU board harness). localca is
// the swtpm_localca program.
func WriteMaker(dir, name, localca string, validity time.Duration) (*Maker, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"devid test TPM maker"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	files := map[string][]byte{
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"root.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"localca.conf": []byte("statedir = " + state + "\n" +
			"signingkey = " + filepath.Join(dir, "key.pem") + "\n" +
			"issuercert = " + filepath.Join(dir, "root.pem") + "\n" +
			"certserial = " + filepath.Join(state, "certserial") + "\n"),
		// Platform certificates (swtpm_setup --create-platform-cert)
		// need these three.
		"localca.options": []byte("--platform-manufacturer devid\n--platform-version 2.1\n--platform-model QEMU\n"),
		"swtpm_setup.conf": []byte("create_certs_tool = " + localca + "\n" +
			"create_certs_tool_config = " + filepath.Join(dir, "localca.conf") + "\n" +
			"create_certs_tool_options = " + filepath.Join(dir, "localca.options") + "\n" +
			"active_pcr_banks = sha256\n"),
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			return nil, err
		}
	}
	return &Maker{Root: root, Key: key, setupConf: filepath.Join(dir, "swtpm_setup.conf")}, nil
}

// SetupConfig is the swtpm_setup.conf file that makes swtpm_setup
// --create-ek-cert sign with this maker (swtpm_setup --config FILE).
func (m *Maker) SetupConfig() string { return m.setupConf }

// RootFile is the maker root as PEM, in the maker's directory.
func (m *Maker) RootFile() string { return filepath.Join(filepath.Dir(m.setupConf), "root.pem") }

// Pool is a certificate pool holding only the maker's root.
func (m *Maker) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Root)
	return p
}
