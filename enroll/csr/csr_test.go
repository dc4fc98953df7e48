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
	for _, tc := range []struct {
		curve elliptic.Curve
		alg   x509.SignatureAlgorithm
	}{
		{elliptic.P256(), x509.ECDSAWithSHA256},
		{elliptic.P384(), x509.ECDSAWithSHA384},
	} {
		k, _ := ecdsa.GenerateKey(tc.curve, rand.Reader)
		der, err := csr.Create(opaqueSigner{k}, "board-7")
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range [][]byte{der, csr.PEM(der)} {
			req, err := csr.Parse(in)
			if err != nil {
				t.Fatal(err)
			}
			if req.Subject.CommonName != "board-7" || req.SignatureAlgorithm != tc.alg {
				t.Fatalf("%s: CN %q alg %v, want %v", tc.curve.Params().Name, req.Subject.CommonName, req.SignatureAlgorithm, tc.alg)
			}
			if pub := req.PublicKey.(*ecdsa.PublicKey); pub.Curve != tc.curve {
				t.Fatalf("CSR key curve %s, want %s", pub.Curve.Params().Name, tc.curve.Params().Name)
			}
		}
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if _, err := csr.Create(k224, "board-7"); err == nil {
		t.Fatal("P-224 key accepted")
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
	// A P-384 key must sign SHA-384 and a P-256 key SHA-256: mixed pairs are refused.
	der384, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ok-1"}, SignatureAlgorithm: x509.ECDSAWithSHA256}, k384)
	der256x384, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ok-1"}, SignatureAlgorithm: x509.ECDSAWithSHA384}, k)
	k521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	der521, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ok-1"}}, k521)
	for name, in := range map[string][]byte{
		"uppercase CN":   bad("Board"),
		"empty CN":       bad(""),
		"bad signature":  flipped,
		"P-384 SHA-256":  der384,
		"P-256 SHA-384":  der256x384,
		"P-521 key":      der521,
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
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := csr.Create(k384, "seed-2")
	f.Add(der384)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n\n-----END CERTIFICATE REQUEST-----"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := csr.Parse(b)
		if err == nil && req.CheckSignature() != nil {
			t.Fatal("Parse accepted a CSR whose signature does not verify")
		}
	})
}
