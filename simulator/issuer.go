package simulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// issuer signs device certificates from the simulator's issuing CA for a
// DPS registration "csr" and for the hub's certificate renewal.
type issuer struct {
	pki      *PKI
	curves   string        // accepted CSR key curves, comma-separated (--csr-curves)
	validity time.Duration // default lifetime of issued certificates
}

// fromCSR validates a base64 DER PKCS#10 request whose subject CN must be
// cn and signs it. validityDays > 0 overrides the default lifetime. It
// returns the chain as base64 DER: leaf, issuing intermediate, root.
func (i *issuer) fromCSR(b64, cn string, validityDays int) ([]string, error) {
	if strings.Contains(b64, "-----") || strings.ContainsAny(b64, "\r\n") {
		return nil, errors.New("csr must be base64 DER without PEM armour or newlines")
	}
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("not base64: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#10 request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %v", err)
	}
	if csr.Subject.CommonName != cn {
		return nil, fmt.Errorf("subject CN %q must equal the registration id %q", csr.Subject.CommonName, cn)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("only EC keys are supported")
	}
	curve := map[elliptic.Curve]string{elliptic.P256(): "P-256", elliptic.P384(): "P-384", elliptic.P521(): "P-521"}[pub.Curve]
	if !slices.Contains(strings.Split(i.curves, ","), curve) {
		return nil, fmt.Errorf("key curve %s is not accepted (accepted: %s)", curve, i.curves)
	}
	validity := i.validity
	if validityDays > 0 {
		validity = time.Duration(validityDays) * 24 * time.Hour
	}
	leaf, err := i.pki.SignCSR(csr, validity)
	if err != nil {
		return nil, err
	}
	out := []string{base64.StdEncoding.EncodeToString(leaf.Raw)}
	for _, c := range i.pki.IssuingChain() {
		out = append(out, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return out, nil
}
