package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"devid/hal/tpm/tpmtest"
)

// TestSWTPMEKCertNeedsTheAllowance: swtpm's EK certificates have an
// empty subject and a critical subjectAltName directoryName, which
// crypto/x509 leaves unhandled; the attested path (TestAttestedPath)
// therefore goes through checkTPMSAN.
func TestSWTPMEKCertNeedsTheAllowance(t *testing.T) {
	t.Parallel()
	b := newBoard(t, tpmtest.NewMaker(t, "maker A"))
	ek, err := x509.ParseCertificate(b.ekCert(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(ek.UnhandledCriticalExtensions) != 1 || !ek.UnhandledCriticalExtensions[0].Equal(oidSubjectAltName) {
		t.Fatalf("swtpm EK certificate's unhandled critical extensions: %v (want the SAN alone)", ek.UnhandledCriticalExtensions)
	}
	if err := checkTPMSAN(ek); err != nil {
		t.Fatalf("swtpm's EK SAN refused: %v", err)
	}
	if _, err := ek.Verify(x509.VerifyOptions{Roots: x509.NewCertPool()}); err == nil {
		t.Fatal("crypto/x509 accepted the certificate unaided: the allowance is untested")
	}
}

// ekWith issues an EK certificate from maker with the given extras.
func ekWith(t *testing.T, maker *tpmtest.Maker, eku []asn1.ObjectIdentifier, extKU []x509.ExtKeyUsage, exts ...pkix.Extension) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		UnknownExtKeyUsage: eku, ExtKeyUsage: extKU, ExtraExtensions: exts, KeyUsage: x509.KeyUsageKeyAgreement,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, maker.Root, &key.PublicKey, maker.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sanDirName(t *testing.T, attr asn1.ObjectIdentifier) pkix.Extension {
	t.Helper()
	rdn, err := asn1.Marshal(pkix.RDNSequence{{{Type: attr, Value: "id:00001014"}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: rdn}})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: v}
}

func TestVerifyEKAllowances(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	v := &Verifier{Roots: maker.Pool()}
	tpmManufacturer := asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	ekEKU := []asn1.ObjectIdentifier{oidEKCertificate}
	for _, tc := range []struct {
		name string
		der  []byte
		ok   bool
	}{
		{"TPM directoryName SAN, EK usage", ekWith(t, maker, ekEKU, nil, sanDirName(t, tpmManufacturer)), true},
		{"no SAN, no usage", ekWith(t, maker, nil, nil), true},
		{"directoryName with a non-TCG attribute", ekWith(t, maker, ekEKU, nil, sanDirName(t, asn1.ObjectIdentifier{2, 5, 4, 3})), false},
		{"another critical extension", ekWith(t, maker, ekEKU, nil, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}}), false},
		{"usage without tcg-kp-EKCertificate", ekWith(t, maker, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}), false},
	} {
		_, err := v.verifyEK([][]byte{tc.der})
		if tc.ok && err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
		}
		if !tc.ok {
			if r, isR := err.(*Refusal); !isR || r.Reason != ReasonEKUntrusted {
				t.Errorf("%s: got %v, want %s", tc.name, err, ReasonEKUntrusted)
			}
		}
	}
}

func TestHardwareModuleNameSANCritical(t *testing.T) {
	r := &Result{HWType: HWTypeTPM2, HWSerialNum: []byte{1, 2, 3}}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	if err := AddHardwareModuleName(tmpl, r); err != nil {
		t.Fatal(err)
	}
	if len(tmpl.ExtraExtensions) != 1 || !tmpl.ExtraExtensions[0].Critical {
		t.Fatalf("empty subject: the SAN must be critical: %+v", tmpl.ExtraExtensions)
	}
	if err := AddHardwareModuleName(tmpl, r); err == nil {
		t.Fatal("a second subjectAltName was added")
	}
	if _, err := HardwareModuleNameSAN(HWTypeTPM2, nil, SANs{}, false); err == nil {
		t.Fatal("empty hwSerialNum accepted")
	}
	if _, err := HardwareModuleNameSAN(HWTypeTPM2, []byte{1}, SANs{DNSNames: []string{"bücher.example"}}, false); err == nil {
		t.Fatal("non-ASCII DNS name accepted")
	}
}
