package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
)

var (
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// tcg-kp-EKCertificate, the extended key usage of EK certificates.
	oidEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	// tcg-at, the arc of the TPM manufacturer/model/version attributes
	// an EK certificate's subjectAltName directoryName holds.
	oidTCGAttribute = asn1.ObjectIdentifier{2, 23, 133, 2}
)

// verifyEK parses the chain and verifies the EK certificate (chain[0])
// against Roots. EK certificates need two deliberate allowances, each
// checked rather than skipped:
//   - their subject is often empty and their subjectAltName, then
//     critical, holds only a directoryName with the TPM manufacturer,
//     model and version (tcg-at attributes). crypto/x509 handles no
//     directoryName and reports the extension as unhandled; it is
//     accepted when it holds exactly that, and any other unhandled
//     critical extension is refused;
//   - their extended key usage is tcg-kp-EKCertificate, which
//     crypto/x509 does not know: the chain is verified for any usage,
//     and an EK certificate that lists usages must list that one.
func (v *Verifier) verifyEK(chain [][]byte) (*x509.Certificate, error) {
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, refuse(ReasonMalformed, "x5c[%d]: %v", i, err)
		}
		certs[i] = c
	}
	ek := certs[0]
	for _, oid := range ek.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) {
			return nil, refuse(ReasonEKUntrusted, "EK certificate has an unexpected critical extension %v", oid)
		}
		if err := checkTPMSAN(ek); err != nil {
			return nil, refuse(ReasonEKUntrusted, "EK certificate subjectAltName: %v", err)
		}
	}
	if len(ek.ExtKeyUsage)+len(ek.UnknownExtKeyUsage) > 0 && !hasOID(ek.UnknownExtKeyUsage, oidEKCertificate) {
		return nil, refuse(ReasonEKUntrusted, "EK certificate's extended key usage lacks tcg-kp-EKCertificate (%v)", oidEKCertificate)
	}
	if v.Roots == nil {
		return nil, refuse(ReasonEKUntrusted, "no TPM maker roots are configured")
	}
	inter := x509.NewCertPool()
	if v.Intermediates != nil {
		inter = v.Intermediates.Clone()
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	checked := *ek // the copy's only change: the allowance above
	checked.UnhandledCriticalExtensions = nil
	if _, err := checked.Verify(x509.VerifyOptions{
		Roots:         v.Roots,
		Intermediates: inter,
		CurrentTime:   now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, refuse(ReasonEKUntrusted, "EK certificate (issuer %q, serial %v): %v", ek.Issuer.String(), ek.SerialNumber, err)
	}
	return ek, nil
}

func hasOID(list []asn1.ObjectIdentifier, oid asn1.ObjectIdentifier) bool {
	for _, o := range list {
		if o.Equal(oid) {
			return true
		}
	}
	return false
}

// checkTPMSAN accepts a subjectAltName made only of directoryNames whose
// attributes are all tcg-at ones.
func checkTPMSAN(c *x509.Certificate) error {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return errors.New("does not parse")
		}
		if len(names) == 0 {
			return errors.New("is empty")
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 4 || !n.IsCompound {
				return fmt.Errorf("holds a name of tag %d that is not a directoryName", n.Tag)
			}
			var rdns pkix.RDNSequence
			if rest, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil || len(rest) > 0 {
				return errors.New("directoryName does not parse")
			}
			for _, rdn := range rdns {
				for _, atv := range rdn {
					if len(atv.Type) != len(oidTCGAttribute)+1 || !atv.Type[:len(oidTCGAttribute)].Equal(oidTCGAttribute) {
						return fmt.Errorf("directoryName attribute %v is not a TCG TPM attribute", atv.Type)
					}
				}
			}
		}
		return nil
	}
	return errors.New("missing")
}

// ekPublicArea is the EK's TPMT_PUBLIC for the key of its certificate:
// the TCG default EK template (the one hal/tpm recreates the EK from)
// with the certificate's key as unique. Only RSA 2048 (exponent 65537)
// and ECC P-256 EKs are supported.
func ekPublicArea(pub any) (*tpm2.TPMTPublic, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 || k.E != 65537 {
			return nil, fmt.Errorf("RSA EK of %d bits, exponent %d: want 2048 bits, 65537", k.N.BitLen(), k.E)
		}
		p := tpm2.RSAEKTemplate
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, 256))})
		return &p, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ECC EK on %s: want P-256", k.Curve.Params().Name)
		}
		b, err := k.Bytes() // 0x04 ‖ X ‖ Y
		if err != nil || len(b) != 65 {
			return nil, fmt.Errorf("ECC EK key: %v", err)
		}
		p := tpm2.ECCEKTemplate
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: b[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: b[33:]},
		})
		return &p, nil
	}
	return nil, fmt.Errorf("EK key of type %T: want RSA 2048 or ECC P-256", pub)
}
