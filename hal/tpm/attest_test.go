package tpm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"devid/hal/tpm/tpmtest"
)

// makeCredential is the verifier's half of credential activation, done
// in software against the EK certificate's key (enroll/attest does the
// same with every check around it).
func makeCredential(t testing.TB, ekDER, akPub, secret []byte) (blob, enc []byte) {
	t.Helper()
	cert, err := x509.ParseCertificate(ekDER)
	if err != nil {
		t.Fatal(err)
	}
	var ek tpm2.TPMTPublic
	switch k := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		ek = tpm2.RSAEKTemplate
		ek.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		ek = tpm2.ECCEKTemplate
		ek.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: b[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: b[33:]},
		})
	default:
		t.Fatalf("EK key %T", cert.PublicKey)
	}
	enckey, err := tpm2.ImportEncapsulationKey(&ek)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm2.Unmarshal[tpm2.TPMTPublic](akPub)
	if err != nil {
		t.Fatal(err)
	}
	name, err := tpm2.ObjectName(ak)
	if err != nil {
		t.Fatal(err)
	}
	blob, enc, err = tpm2.CreateCredential(rand.Reader, enckey, name.Buffer, secret)
	if err != nil {
		t.Fatal(err)
	}
	return blob, enc
}

func TestAttestActivate(t *testing.T) {
	t.Parallel()
	maker := tpmtest.NewMaker(t, "maker")
	tp := openT(t, tpmtest.Start(t, tpmtest.ManufacturedBy(maker)).Addr())
	k := newKey(t, tp)
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{7}, 32)
	a, err := tp.Attest(ctx, k, nonce)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	ek, err := x509.ParseCertificate(a.EKCerts[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := ek.CheckSignatureFrom(maker.Root); err != nil {
		t.Errorf("EK certificate not issued by the maker: %v", err)
	}
	info, err := tpm2.Unmarshal[tpm2.TPMSAttest](a.CertInfo)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info.ExtraData.Buffer, nonce) {
		t.Errorf("extraData %x, want the nonce", info.ExtraData.Buffer)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.AKPub)
	if err != nil {
		t.Fatal(err)
	}
	akKey, err := tpm2.Pub(*akPub)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(a.CertInfo)
	if !ecdsa.VerifyASN1(akKey.(*ecdsa.PublicKey), d[:], a.Sig) {
		t.Error("Sig does not verify with the AK")
	}
	// Same AK every time.
	a2, err := tp.Attest(ctx, k, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.AKPub, a2.AKPub) {
		t.Error("the AK differs between two Attest calls")
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	blob, enc := makeCredential(t, a.EKCerts[0], a.AKPub, secret)
	got, err := tp.ActivateCredential(ctx, blob, enc)
	if err != nil {
		t.Fatalf("ActivateCredential: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Errorf("ActivateCredential = %x, want %x", got, secret)
	}
	// A credential for another name does not activate.
	other := AKTemplate
	other.ObjectAttributes.NoDA = true
	blob, enc = makeCredential(t, a.EKCerts[0], tpm2.Marshal(other), secret)
	if _, err := tp.ActivateCredential(ctx, blob, enc); err == nil {
		t.Error("ActivateCredential released a credential made for another AK name")
	}
	if h, err := tp.Transient(ctx); err != nil || len(h) != 0 {
		t.Errorf("transient handles left: %v (%v)", h, err)
	}
}

func TestAttestNoEKCert(t *testing.T) {
	t.Parallel()
	tp := openT(t, tpmtest.Start(t).Addr())
	k := newKey(t, tp)
	_, err := tp.Attest(context.Background(), k, []byte("nonce"))
	if !errors.Is(err, ErrNoEKCert) {
		t.Fatalf("Attest on a TPM without EK certificate: %v, want ErrNoEKCert", err)
	}
	if _, err := tp.ActivateCredential(context.Background(), []byte{1}, []byte{2}); !errors.Is(err, ErrNoEKCert) {
		t.Fatalf("ActivateCredential on a TPM without EK certificate: %v, want ErrNoEKCert", err)
	}
}
