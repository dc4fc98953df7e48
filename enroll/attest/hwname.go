package attest

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"net/url"
)

// The DevID certificate names the TPM its key lives in with a
// HardwareModuleName (RFC 4108) otherName in subjectAltName, as the TCG
// document on TPM 2.0 device identity keys suggests for DevIDs attested
// through an EK certificate. The choice here (docs/attestation.md):
//
//   - hwType = HWTypeTPM2, the TCG OID for TPM 2.0 (2.23.133.1.2): the
//     module is a TPM 2.0 identified through its EK certificate;
//   - hwSerialNum = HWSerialNum(EK certificate): SHA-256 over the EK
//     certificate's issuer Name (DER) followed by its serial number
//     (DER INTEGER). issuer+serial names one EK certificate among every
//     maker's; the hash gives it a fixed 32-byte size, and anyone holding
//     the EK certificate (the ledger keeps its fingerprint) can recompute
//     it.
var (
	HWTypeTPM2 = asn1.ObjectIdentifier{2, 23, 133, 1, 2}
	// OIDHardwareModuleName is id-on-hardwareModuleName (RFC 4108).
	OIDHardwareModuleName = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 4}
)

// HWSerialNum is the hwSerialNum for the TPM of an EK certificate:
// SHA-256(issuer DER ‖ serialNumber DER).
func HWSerialNum(ek *x509.Certificate) []byte {
	serial, err := asn1.Marshal(ek.SerialNumber)
	if err != nil { // a parsed certificate's serial always marshals
		serial = nil
	}
	h := sha256.New()
	h.Write(ek.RawIssuer)
	h.Write(serial)
	return h.Sum(nil)
}

// hardwareModuleName is the RFC 4108 structure.
type hardwareModuleName struct {
	HWType      asn1.ObjectIdentifier
	HWSerialNum []byte
}

// SANs are the other subjectAltName entries a certificate carries next
// to the HardwareModuleName (any may be empty).
type SANs struct {
	DNSNames       []string
	EmailAddresses []string
	IPAddresses    []net.IP
	URIs           []*url.URL
}

// HardwareModuleNameSAN builds a subjectAltName extension holding the
// HardwareModuleName (hwType, serial) and the other names. critical
// should be true when the certificate's subject is empty (RFC 5280).
func HardwareModuleNameSAN(hwType asn1.ObjectIdentifier, serial []byte, other SANs, critical bool) (pkix.Extension, error) {
	if len(hwType) < 2 || len(serial) == 0 {
		return pkix.Extension{}, errors.New("hardwareModuleName: empty hwType or hwSerialNum")
	}
	hmn, err := asn1.Marshal(hardwareModuleName{HWType: hwType, HWSerialNum: serial})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("hardwareModuleName: %w", err)
	}
	typeID, err := asn1.Marshal(OIDHardwareModuleName)
	if err != nil {
		return pkix.Extension{}, err
	}
	value, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: hmn})
	if err != nil {
		return pkix.Extension{}, err
	}
	names := []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(typeID, value...)}}
	ia5 := func(tag int, kind string, vals []string) error {
		for _, v := range vals {
			if v == "" {
				return fmt.Errorf("subjectAltName: empty %s", kind)
			}
			for i := 0; i < len(v); i++ {
				if v[i] > 0x7f {
					return fmt.Errorf("subjectAltName: %s %q is not ASCII", kind, v)
				}
			}
			names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, Bytes: []byte(v)})
		}
		return nil
	}
	if err := ia5(1, "email address", other.EmailAddresses); err != nil {
		return pkix.Extension{}, err
	}
	if err := ia5(2, "DNS name", other.DNSNames); err != nil {
		return pkix.Extension{}, err
	}
	uris := make([]string, len(other.URIs))
	for i, u := range other.URIs {
		uris[i] = u.String()
	}
	if err := ia5(6, "URI", uris); err != nil {
		return pkix.Extension{}, err
	}
	for _, ip := range other.IPAddresses {
		b := ip.To4()
		if b == nil {
			b = ip.To16()
		}
		if b == nil {
			return pkix.Extension{}, fmt.Errorf("subjectAltName: bad IP address %v", ip)
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 7, Bytes: b})
	}
	der, err := asn1.Marshal(names)
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: critical, Value: der}, nil
}

// AddHardwareModuleName adds to tmpl (a certificate template for
// x509.CreateCertificate) a subjectAltName with r's HardwareModuleName
// and tmpl's DNS, email, IP and URI names, which it keeps: crypto/x509
// then writes this extension instead of making one from those fields.
// The extension is critical when tmpl's subject is empty.
func AddHardwareModuleName(tmpl *x509.Certificate, r *Result) error {
	for _, e := range tmpl.ExtraExtensions {
		if e.Id.Equal(oidSubjectAltName) {
			return errors.New("hardwareModuleName: the template already has a subjectAltName extension")
		}
	}
	emptySubject := len(tmpl.RawSubject) == 0 && len(tmpl.Subject.ToRDNSequence()) == 0
	ext, err := HardwareModuleNameSAN(r.HWType, r.HWSerialNum, SANs{
		DNSNames: tmpl.DNSNames, EmailAddresses: tmpl.EmailAddresses, IPAddresses: tmpl.IPAddresses, URIs: tmpl.URIs,
	}, emptySubject)
	if err != nil {
		return err
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
	return nil
}

// ParseHardwareModuleName returns the HardwareModuleName of a
// certificate's subjectAltName; ok is false when it has none.
func ParseHardwareModuleName(c *x509.Certificate) (hwType asn1.ObjectIdentifier, serial []byte, ok bool, err error) {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return nil, nil, false, errors.New("subjectAltName does not parse")
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || n.Tag != 0 {
				continue
			}
			var on struct {
				TypeID asn1.ObjectIdentifier
				Value  asn1.RawValue `asn1:"explicit,tag:0"`
			}
			if rest, err := asn1.UnmarshalWithParams(n.FullBytes, &on, "tag:0"); err != nil || len(rest) > 0 {
				return nil, nil, false, errors.New("otherName does not parse")
			}
			if !on.TypeID.Equal(OIDHardwareModuleName) {
				continue
			}
			var h hardwareModuleName
			if rest, err := asn1.Unmarshal(on.Value.Bytes, &h); err != nil || len(rest) > 0 {
				return nil, nil, false, errors.New("hardwareModuleName does not parse")
			}
			return h.HWType, h.HWSerialNum, true, nil
		}
	}
	return nil, nil, false, nil
}
