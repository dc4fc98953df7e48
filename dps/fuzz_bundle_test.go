package dps

import (
	"encoding/pem"
	"testing"
)

// FuzzParseTrustBundle: dps.trust_bundle is a file an operator (or an
// update) puts on the device. The parser must never panic, and whatever
// it accepts must be at least one real certificate.
func FuzzParseTrustBundle(f *testing.F) {
	ca := newTestCA(f, "Fuzz Root")
	one := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	f.Add(one)
	f.Add(append(append([]byte("# comment\n"), one...), one...))
	f.Add(append(one, []byte("trailing junk")...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}))
	f.Add([]byte(""))
	f.Add(AzureRootsPEM())
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseTrustBundle(b)
		if err != nil {
			if certs != nil {
				t.Fatalf("error %v with %d certificates", err, len(certs))
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("accepted a bundle with no certificates")
		}
		for i, c := range certs {
			if c == nil || len(c.Raw) == 0 {
				t.Fatalf("certificate %d empty", i)
			}
		}
	})
}
