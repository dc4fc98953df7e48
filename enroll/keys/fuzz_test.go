package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
)

// FuzzParseKey: the key file is read back at every start and may be
// truncated or replaced by hand. parseKey must never panic and must
// accept only a P-256 or P-384 PKCS#8 key.
func FuzzParseKey(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(ec)
	good := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	f.Add(good)
	f.Add(good[:len(good)/2])
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalPKCS8PrivateKey(p384)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der384}))
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	der521, _ := x509.MarshalPKCS8PrivateKey(p521)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der521}))
	if rk, err := rsa.GenerateKey(rand.Reader, 1024); err == nil {
		derRSA, _ := x509.MarshalPKCS8PrivateKey(rk)
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: derRSA}))
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	f.Add([]byte("not a key"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseKey(b)
		if err != nil {
			if k != nil {
				t.Fatalf("error %v with a key", err)
			}
			return
		}
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			t.Fatalf("accepted curve %v", k.Curve.Params().Name)
		}
		if _, err := k.ECDH(); err != nil {
			t.Fatalf("accepted an unusable key: %v", err)
		}
	})
}
