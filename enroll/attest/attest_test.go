package attest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"devid/hal/tpm"
	"devid/hal/tpm/tpmtest"
)

// wantRefusal fails unless err is a *Refusal with reason.
func wantRefusal(t *testing.T, err error, reason string) {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("got %v, want a refusal %q", err, reason)
	}
	if r.Reason != reason {
		t.Fatalf("refused for %q (%s), want %q", r.Reason, r.Detail, reason)
	}
}

// roundTrip runs Begin, the device's activation and Finish.
func roundTrip(t *testing.T, v *Verifier, b *board, st *Statement, n []byte, csrPub any) (*Result, error) {
	t.Helper()
	p, err := v.Begin(st, n, csrPub)
	if err != nil {
		return nil, err
	}
	ch := p.Challenge()
	secret, err := b.dev.Activate(context.Background(), ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Logf("device could not activate: %v", err)
		secret = make([]byte, credentialSize) // what a forger can answer
	}
	return p.Finish(secret)
}

func TestAttestedPath(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	b := newBoard(t, maker)
	v := &Verifier{Roots: maker.Pool()}
	n := nonce(t)
	st := b.attest(t, n)
	res, err := roundTrip(t, v, b, st, n, b.key.Public())
	if err != nil {
		t.Fatalf("attested path refused: %v", err)
	}
	sum := sha256.Sum256(st.X5C[0])
	if res.EKFingerprint != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("EKFingerprint %s", res.EKFingerprint)
	}
	if !res.HWType.Equal(HWTypeTPM2) || !bytes.Equal(res.HWSerialNum, HWSerialNum(res.EKCert)) || len(res.HWSerialNum) != 32 {
		t.Errorf("hardwareModuleName %v %x", res.HWType, res.HWSerialNum)
	}
	ak, _ := tpm2.Unmarshal[tpm2.TPMTPublic](st.AKPub)
	name, _ := tpm2.ObjectName(ak)
	if !bytes.Equal(res.AKName, name.Buffer) {
		t.Errorf("AKName %x, want %x", res.AKName, name.Buffer)
	}
	// The CA puts the HardwareModuleName in the DevID certificate, with
	// the names it sets already.
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "board-1"},
		NotBefore:    time.Now(), NotAfter: time.Now().Add(time.Hour),
		DNSNames:    []string{"board-1.example"},
		URIs:        []*url.URL{{Scheme: "urn", Opaque: "dev:board-1"}},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
	}
	if err := AddHardwareModuleName(tmpl, res); err != nil {
		t.Fatal(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, b.key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	hwType, serial, ok, err := ParseHardwareModuleName(cert)
	if err != nil || !ok || !hwType.Equal(HWTypeTPM2) || !bytes.Equal(serial, res.HWSerialNum) {
		t.Errorf("HardwareModuleName in the certificate: %v %x %v %v", hwType, serial, ok, err)
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "board-1.example" || len(cert.URIs) != 1 || cert.URIs[0].String() != "urn:dev:board-1" ||
		len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("other SANs lost: %v %v %v", cert.DNSNames, cert.URIs, cert.IPAddresses)
	}
	if len(cert.UnhandledCriticalExtensions) != 0 {
		t.Errorf("the SAN with a subject must not be critical: %v", cert.UnhandledCriticalExtensions)
	}
	if h, err := b.tp.Transient(context.Background()); err != nil || len(h) != 0 {
		t.Errorf("transient handles left: %v (%v)", h, err)
	}
}

// TestAttestedPathECCEK: a TPM whose low-range EK certificate is ECC
// P-256 (the encapsulation is ECDH then).
func TestAttestedPathECCEK(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	b := newBoard(t, maker)
	provisionECCEK(t, b, maker)
	n := nonce(t)
	st := b.attest(t, n)
	ek, err := x509.ParseCertificate(st.X5C[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ek.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("Attest sent an EK certificate for %T, want the ECC one", ek.PublicKey)
	}
	if _, err := roundTrip(t, &Verifier{Roots: maker.Pool()}, b, st, n, b.key.Public()); err != nil {
		t.Fatalf("attested path with an ECC EK refused: %v", err)
	}
}

func TestForgeries(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	a, b2 := newBoard(t, maker), newBoard(t, maker)
	v := &Verifier{Roots: maker.Pool()}

	t.Run("software key claiming TPM", func(t *testing.T) {
		n := nonce(t)
		st, devKey := softStatement(t, a.ekCert(t), n, tpm2.TPMSTAttestCertify)
		_, err := roundTrip(t, v, a, st, n, &devKey.PublicKey)
		wantRefusal(t, err, ReasonActivation)
	})
	t.Run("AK from another TPM", func(t *testing.T) {
		n := nonce(t)
		st := b2.attest(t, n)
		st.X5C = [][]byte{a.ekCert(t)}
		// Neither TPM can release it: B lacks A's EK, A lacks B's AK.
		_, err := roundTrip(t, v, b2, st, n, b2.key.Public())
		wantRefusal(t, err, ReasonActivation)
		_, err = roundTrip(t, v, a, st, n, b2.key.Public())
		wantRefusal(t, err, ReasonActivation)
	})
	t.Run("replayed nonce", func(t *testing.T) {
		old := nonce(t)
		st := a.attest(t, old)
		_, err := v.Begin(st, nonce(t), a.key.Public())
		wantRefusal(t, err, ReasonNonce)
	})
	t.Run("certify over another key", func(t *testing.T) {
		n := nonce(t)
		other := a.attest(t, n) // certifies a's key
		// The CSR is b2's key: key-not-csr.
		_, err := v.Begin(other, n, b2.key.Public())
		wantRefusal(t, err, ReasonKeyMismatch)
		// PubArea swapped for another key than the certified one: certify-name.
		swapped := *other
		swapped.PubArea = b2.attest(t, nonce(t)).PubArea
		_, err = v.Begin(&swapped, n, b2.key.Public())
		wantRefusal(t, err, ReasonName)
	})
	t.Run("unknown maker", func(t *testing.T) {
		n := nonce(t)
		st := a.attest(t, n)
		_, err := (&Verifier{Roots: tpmtest.NewMaker(t, "maker B").Pool()}).Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonEKUntrusted)
		_, err = (&Verifier{}).Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonEKUntrusted)
		_, err = (&Verifier{Roots: maker.Pool(), Now: func() time.Time { return time.Now().Add(48 * time.Hour) }}).Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonEKUntrusted) // after the maker root expired
	})
	t.Run("key without fixedTPM", func(t *testing.T) {
		n := nonce(t)
		tmpl := tpm.SigningKeyTemplate
		tmpl.ObjectAttributes.FixedTPM = false
		tmpl.ObjectAttributes.FixedParent = false
		st, pub := certifyRaw(t, a, tmpl, n)
		_, err := v.Begin(st, n, pub)
		wantRefusal(t, err, ReasonAttributes)
		// The same path with the attributes intact passes Begin: the
		// refusal above is for the attributes alone.
		st, pub = certifyRaw(t, a, tpm.SigningKeyTemplate, n)
		if _, err := roundTrip(t, v, a, st, n, pub); err != nil {
			t.Fatalf("control: %v", err)
		}
	})
	t.Run("no EK certificate", func(t *testing.T) {
		n := nonce(t)
		st := a.attest(t, n)
		st.X5C = nil
		_, err := v.Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonNoEKCert)
	})
	t.Run("bad signature", func(t *testing.T) {
		n := nonce(t)
		st := a.attest(t, n)
		st.CertInfo = append([]byte(nil), st.CertInfo...)
		st.CertInfo[len(st.CertInfo)-1] ^= 1
		_, err := v.Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonSignature)
	})
	t.Run("not a certify", func(t *testing.T) {
		n := nonce(t)
		st, devKey := softStatement(t, a.ekCert(t), n, tpm2.TPMSTAttestTime)
		_, err := v.Begin(st, n, &devKey.PublicKey)
		wantRefusal(t, err, ReasonNotCertify)
	})
	t.Run("AK not restricted", func(t *testing.T) {
		n := nonce(t)
		st, devKey := softStatement(t, a.ekCert(t), n, tpm2.TPMSTAttestCertify)
		ak, _ := tpm2.Unmarshal[tpm2.TPMTPublic](st.AKPub)
		ak.ObjectAttributes.Restricted = false
		st.AKPub = tpm2.Marshal(*ak)
		_, err := v.Begin(st, n, &devKey.PublicKey)
		wantRefusal(t, err, ReasonAttributes)
	})
	t.Run("malformed", func(t *testing.T) {
		n := nonce(t)
		st := a.attest(t, n)
		st.AKPub = append(append([]byte(nil), st.AKPub...), 0) // trailing byte
		_, err := v.Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonMalformed)
		st = a.attest(t, n)
		st.X5C = [][]byte{[]byte("not a certificate")}
		_, err = v.Begin(st, n, a.key.Public())
		wantRefusal(t, err, ReasonMalformed)
	})
	t.Run("answered twice", func(t *testing.T) {
		n := nonce(t)
		p, err := v.Begin(a.attest(t, n), n, a.key.Public())
		if err != nil {
			t.Fatal(err)
		}
		ch := p.Challenge()
		secret, err := a.dev.Activate(context.Background(), ch.CredentialBlob, ch.EncryptedSecret)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Finish(secret); err != nil {
			t.Fatal(err)
		}
		_, err = p.Finish(secret)
		wantRefusal(t, err, ReasonActivation)
	})
}

// TestForgeriesLeaveTPMUsable: a refused activation (e.g. a secret
// encrypted to another TPM's RSA EK, which swtpm answers with
// TPM_RC_FAILURE) leaves the TPM working: the honest path passes after.
func TestForgeriesLeaveTPMUsable(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker A")
	a, b2 := newBoard(t, maker), newBoard(t, maker)
	v := &Verifier{Roots: maker.Pool()}
	n := nonce(t)
	st := b2.attest(t, n)
	st.X5C = [][]byte{a.ekCert(t)}
	_, err := roundTrip(t, v, b2, st, n, b2.key.Public())
	wantRefusal(t, err, ReasonActivation)
	for _, bd := range []*board{a, b2} {
		n := nonce(t)
		if _, err := roundTrip(t, v, bd, bd.attest(t, n), n, bd.key.Public()); err != nil {
			t.Fatalf("honest path after a forgery: %v", err)
		}
	}
}

func TestParseStatement(t *testing.T) {
	good, _ := softStatement(t, []byte{0x30, 0}, make([]byte, 32), tpm2.TPMSTAttestCertify)
	js, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseStatement(js); err != nil {
		t.Fatalf("round trip: %v", err)
	}
	for name, in := range map[string][]byte{
		"trailing":      append(append([]byte(nil), js...), []byte(" {}")...),
		"unknown field": bytes.Replace(js, []byte(`"ver"`), []byte(`"extra":1,"ver"`), 1),
		"version":       bytes.Replace(js, []byte(`"2.0"`), []byte(`"1.0"`), 1),
		"alg":           bytes.Replace(js, []byte(`-7`), []byte(`-257`), 1),
		"empty":         []byte(`{}`),
		"not json":      []byte(`garbage`),
		"too big":       bytes.Repeat([]byte(" "), MaxStatementSize+1),
	} {
		if _, err := ParseStatement(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
