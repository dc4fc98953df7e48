package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"devid/hal/tpm"
)

// FuzzParseStatement: the statement comes over the factory bus from a
// board the jig does not trust yet.
func FuzzParseStatement(f *testing.F) {
	st, _ := softStatement(f, []byte{0x30, 0}, make([]byte, 32), tpm2.TPMSTAttestCertify)
	js, err := st.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(js)
	f.Add([]byte(`{"ver":"2.0","alg":-7,"x5c":[],"sig":"AA==","certInfo":"AA==","pubArea":"AA==","akPub":"AA=="}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatement(b)
		if err != nil {
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("a parsed statement does not marshal: %v", err)
		}
		if _, err := ParseStatement(out); err != nil {
			t.Fatalf("a marshalled statement does not parse: %v", err)
		}
	})
}

// FuzzTPMStructures: the TPMS_ATTEST and TPMT_PUBLIC parsing Begin does
// on certInfo, pubArea and akPub. Any outcome but a panic is fine; a
// pass must be a consistent statement.
func FuzzTPMStructures(f *testing.F) {
	n := make([]byte, 32)
	st, _ := softStatement(f, []byte{0x30, 0}, n, tpm2.TPMSTAttestCertify)
	f.Add(st.CertInfo, st.PubArea, st.AKPub)
	f.Add(st.CertInfo[:10], st.PubArea[:20], st.AKPub[:5])
	f.Add([]byte{}, tpm2.Marshal(tpm2.RSAEKTemplate), tpm2.Marshal(tpm.AKTemplate))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Fuzz(func(t *testing.T, certInfo, pubArea, akPub []byte) {
		_, _, _ = parseAK(akPub)
		if checkCertify(certInfo, pubArea, n) == nil {
			if _, err := unmarshalExact[tpm2.TPMTPublic](pubArea); err != nil {
				t.Fatalf("checkCertify passed an unparsable pubArea: %v", err)
			}
		}
		_ = checkKey(pubArea, &key.PublicKey)
	})
}
