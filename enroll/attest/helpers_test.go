package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"devid/hal/tpm"
	"devid/hal/tpm/tpmtest"
)

// board is a TPM with a DevID key, as a device has it.
type board struct {
	tp  *tpm.TPM
	key *tpm.Key
	dev *Device
}

func newBoard(t testing.TB, maker *tpmtest.Maker) *board {
	t.Helper()
	sw := tpmtest.Start(t, tpmtest.ManufacturedBy(maker))
	tp, err := tpm.Open(context.Background(), sw.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	blob, err := tp.CreateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.LoadKey(context.Background(), blob)
	if err != nil {
		t.Fatal(err)
	}
	return &board{tp: tp, key: k, dev: &Device{TPM: tp, Key: k}}
}

func nonce(t testing.TB) []byte {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

// attest runs the device side and parses the statement as the jig does.
func (b *board) attest(t testing.TB, n []byte) *Statement {
	t.Helper()
	js, err := b.dev.Attest(context.Background(), n)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	st, err := ParseStatement(js)
	if err != nil {
		t.Fatalf("ParseStatement: %v", err)
	}
	return st
}

// ekCert is the board's EK certificate as Attest sends it.
func (b *board) ekCert(t testing.TB) []byte {
	return b.attest(t, nonce(t)).X5C[0]
}

// softStatement forges a statement without a TPM: a software "AK"
// signs a TPMS_ATTEST certifying a software key whose public area claims
// fixedTPM; ekDER is a genuine EK certificate. It returns the statement
// and the software DevID key.
func softStatement(t testing.TB, ekDER, n []byte, typ tpm2.TPMST) (*Statement, *ecdsa.PrivateKey) {
	t.Helper()
	akKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub := func(tmpl tpm2.TPMTPublic, k *ecdsa.PrivateKey) tpm2.TPMTPublic {
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))},
		})
		return tmpl
	}
	ak := pub(tpm.AKTemplate, akKey)
	dev := pub(tpm.SigningKeyTemplate, devKey)
	devName, err := tpm2.ObjectName(&dev)
	if err != nil {
		t.Fatal(err)
	}
	akName, _ := tpm2.ObjectName(&ak)
	info := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            typ,
		QualifiedSigner: *akName,
		ExtraData:       tpm2.TPM2BData{Buffer: n},
		Attested:        tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{Name: *devName, QualifiedName: *devName}),
	}
	if typ != tpm2.TPMSTAttestCertify {
		info.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestTime, &tpm2.TPMSTimeAttestInfo{})
	}
	certInfo := tpm2.Marshal(info)
	d := sha256.Sum256(certInfo)
	sig, err := ecdsa.SignASN1(rand.Reader, akKey, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return &Statement{
		Ver: StatementVersion, Alg: AlgES256, X5C: [][]byte{ekDER}, Sig: sig,
		CertInfo: certInfo, PubArea: tpm2.Marshal(dev), AKPub: tpm2.Marshal(ak),
	}, devKey
}

// certifyRaw does what (*tpm.TPM).Attest does, for a key made from tmpl
// under the SRK, which tpm.LoadKey would refuse (e.g. without
// fixedTPM). It returns the statement and the key's public key.
func certifyRaw(t testing.TB, b *board, tmpl tpm2.TPMTPublic, n []byte) (*Statement, any) {
	t.Helper()
	ek, err := b.tp.EK(context.Background())
	if err != nil || ek.Cert == nil {
		t.Fatalf("EK: %v", err)
	}
	st := &Statement{Ver: StatementVersion, Alg: AlgES256, X5C: [][]byte{ek.Cert.Raw}}
	var pub any
	err = b.tp.Do(context.Background(), func(tr transport.TPM) error {
		srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tr)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(tr)
		k, err := tpm2.CreateLoaded{
			ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2BTemplate(&tmpl),
		}.Execute(tr)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: k.ObjectHandle}.Execute(tr)
		ak, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm.AKTemplate)}.Execute(tr)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: ak.ObjectHandle}.Execute(tr)
		rsp, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: k.ObjectHandle, Name: k.Name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: n},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(tr)
		if err != nil {
			return err
		}
		e, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return err
		}
		st.Sig, _ = asn1Sig(e.SignatureR.Buffer, e.SignatureS.Buffer)
		st.CertInfo = rsp.CertifyInfo.Bytes()
		kp, _ := k.OutPublic.Contents()
		st.PubArea = tpm2.Marshal(*kp)
		pub, err = tpm2.Pub(*kp)
		if err != nil {
			return err
		}
		ap, _ := ak.OutPublic.Contents()
		st.AKPub = tpm2.Marshal(*ap)
		return nil
	})
	if err != nil {
		t.Fatalf("certify a raw key: %v", err)
	}
	return st, pub
}

func asn1Sig(r, s []byte) ([]byte, error) {
	type sig struct{ R, S *big.Int }
	return asn1.Marshal(sig{new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)})
}

// provisionECCEK gives the board's TPM an ECC P-256 EK certificate at
// the low-range NV index, issued by maker, as some TPM vendors ship
// (swtpm_setup writes an RSA one there and an ECC P-384 one in the high
// range).
func provisionECCEK(t testing.TB, b *board, maker *tpmtest.Maker) {
	t.Helper()
	err := b.tp.Do(context.Background(), func(tr transport.TPM) error {
		ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.ECCEKTemplate)}.Execute(tr)
		if err != nil {
			return err
		}
		tpm2.FlushContext{FlushHandle: ek.ObjectHandle}.Execute(tr)
		p, _ := ek.OutPublic.Contents()
		key, err := tpm2.Pub(*p)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber:       big.NewInt(time.Now().UnixNano()),
			Subject:            pkix.Name{CommonName: "ECC EK"},
			NotBefore:          time.Now().Add(-time.Hour),
			NotAfter:           time.Now().Add(time.Hour),
			KeyUsage:           x509.KeyUsageKeyAgreement,
			UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidEKCertificate},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, maker.Root, key, maker.Key)
		if err != nil {
			return err
		}
		idx := tpm2.TPMHandle(tpm.NVIndexECCEKCert)
		_, err = tpm2.NVDefineSpace{
			AuthHandle: tpm2.TPMRHOwner,
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex: idx, NameAlg: tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true, PPWrite: false},
				DataSize:   uint16(len(der)),
			}),
		}.Execute(tr)
		if err != nil {
			return err
		}
		rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(tr)
		if err != nil {
			return err
		}
		for off := 0; off < len(der); off += 512 {
			end := min(off+512, len(der))
			_, err = tpm2.NVWrite{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				NVIndex:    tpm2.NamedHandle{Handle: idx, Name: rp.NVName},
				Data:       tpm2.TPM2BMaxNVBuffer{Buffer: der[off:end]},
				Offset:     uint16(off),
			}.Execute(tr)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("provision ECC EK certificate: %v", err)
	}
}
