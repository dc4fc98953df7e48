// Package attest proves, before the factory CA signs a board's CSR, that
// the CSR's key lives in a TPM whose EK certificate chains to a
// configured TPM maker root (docs/attestation.md).
//
// The device side (Device) has the TPM certify the key with an
// attestation key (AK) over the jig's nonce and returns a Statement; the
// jig side (Verifier) checks the statement, then challenges the device
// with a credential only the EK's TPM can release, and only for an AK
// loaded in that TPM (Pending.Finish). Every refusal is a *Refusal with a
// stable Reason.
package attest
