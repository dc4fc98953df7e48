package station

import "encoding/asn1"

// Outcomes of the jig's attest step (docs/factory-protocol.md section 8),
// as `devid-jig program` reports them and the CA ledger records them
// (docs/ca.md).
const (
	// Attested: the board proved its key is in a TPM whose EK certificate
	// chains to the line's TPM roots.
	Attested = "attested"
	// NotOffered: the board's HELLO has no attest=1 (a software key, or
	// firmware older than attestation).
	NotOffered = "not-offered"
	// NotChecked: the board offered attestation, but the jig was run
	// without TPM roots and did not ask.
	NotChecked = "not-checked"
	// RefusedPrefix starts the outcome of a refused board:
	// "refused:<reason>", the reason a jig.Refusal code.
	RefusedPrefix = "refused:"
)

// Attestation is the outcome of the attest step for one board: what the
// jig hands the CA, which records it and, for an attested key, puts the
// HardwareModuleName into the certificate.
type Attestation struct {
	// Outcome is one of the constants above, or RefusedPrefix + reason.
	Outcome string
	// Detail explains a refusal.
	Detail string
	// EKSHA256 is the lowercase hex SHA-256 of the EK certificate (DER)
	// the board sent, "" when it sent none.
	EKSHA256 string
	// HWType and HWSerialNum are the HardwareModuleName (RFC 4108) of an
	// attested key.
	HWType      asn1.ObjectIdentifier
	HWSerialNum []byte
}

// IsAttested reports whether the key was proven to be in a TPM.
func (a Attestation) IsAttested() bool { return a.Outcome == Attested }
