package csr_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"testing"

	"devid/enroll/csr"
)

// opaqueSigner hides the concrete key type, as a TPM signer does.
type opaqueSigner struct{ k *ecdsa.PrivateKey }

func (s opaqueSigner) Public() crypto.PublicKey { return s.k.Public() }
func (s opaqueSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, d, o)
}

func TestCreateParse(t *testing.T) {
	t.Parallel()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := csr.Create(opaqueSigner{k}, "board-7")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{der, csr.PEM(der)} {
		req, err := csr.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if req.Subject.CommonName != "board-7" || req.SignatureAlgorithm != x509.ECDSAWithSHA256 {
			t.Fatalf("CN %q alg %v", req.Subject.CommonName, req.SignatureAlgorithm)
		}
	}
	if _, err := csr.Create(opaqueSigner{k}, "Bad ID"); err == nil {
		t.Fatal("invalid device ID accepted")
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := csr.Create(rk, "board-7"); err == nil {
		t.Fatal("RSA key accepted")
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bad := func(cn string) []byte {
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
		return der
	}
	good, _ := csr.Create(k, "ok-1")
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-5] ^= 0x01
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ok-1"}}, k384)
	for name, in := range map[string][]byte{
		"uppercase CN":   bad("Board"),
		"empty CN":       bad(""),
		"bad signature":  flipped,
		"P-384 key":      der384,
		"garbage":        []byte("hello"),
		"wrong PEM type": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
	} {
		if _, err := csr.Parse(in); !errors.Is(err, csr.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := csr.Create(k, "seed-1")
	f.Add(der)
	f.Add(csr.PEM(der))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n\n-----END CERTIFICATE REQUEST-----"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := csr.Parse(b)
		if err == nil && req.CheckSignature() != nil {
			t.Fatal("Parse accepted a CSR whose signature does not verify")
		}
	})
}
