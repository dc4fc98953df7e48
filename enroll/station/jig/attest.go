package jig

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"devid/enroll/factory"
	"devid/enroll/station"
)

// Verifier checks a board's TPM key attestation. It is enroll/attest's
// Verifier behind a few lines of adapter (the statement parsed with
// attest.ParseStatement, the Challenge's two fields returned, an
// *attest.Refusal turned into a *Refusal), so that this package needs
// only this much of it.
type Verifier interface {
	// Begin checks the statement (JSON, as the board sent it) against the
	// nonce and the CSR's public key, and returns the activation
	// challenge. A refused statement is a *Refusal.
	Begin(statement, nonce []byte, csrPub crypto.PublicKey) (Pending, error)
}

// Pending is an attestation waiting for the board's activation secret.
type Pending interface {
	// Challenge is what ACTIVATE sends the board.
	Challenge() (credentialBlob, encryptedSecret []byte)
	// Finish checks the secret the board recovered; a wrong one is a
	// *Refusal (activation-failed).
	Finish(secret []byte) (*Attested, error)
}

// Attested is what a successful attestation proved.
type Attested struct {
	// EKCert is the board's EK certificate, verified to a TPM root.
	EKCert *x509.Certificate
	// HWType and HWSerialNum are the HardwareModuleName (RFC 4108) the
	// CA puts into the certificate.
	HWType      asn1.ObjectIdentifier
	HWSerialNum []byte
}

// Refusal is a board refused at the attest step. Reason is a stable
// code: enroll/attest's refusal reasons (malformed, no-ek-cert,
// ek-untrusted, certify-signature, not-certify, nonce, certify-name,
// key-not-csr, key-attributes, activation-failed) or the jig's own
// below.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return "attestation refused: " + r.Reason + ": " + r.Detail }

// Refusal reasons the jig itself decides; the others come from the
// Verifier.
const (
	// ReasonNotOffered: attestation is required, the board does not offer it.
	ReasonNotOffered = "not-offered"
	// ReasonNoEKCert: the board's TPM has no EK certificate (NAK attest no-ek-cert).
	ReasonNoEKCert = "no-ek-cert"
	// ReasonActivation: the board's TPM could not activate the challenge
	// (NAK attest activation), or its secret was wrong.
	ReasonActivation = "activation-failed"
	// ReasonDeviceFailed: the board refused ATTEST or ACTIVATE otherwise.
	ReasonDeviceFailed = "device-failed"
)

// AttestingIssuer is an Issuer that takes the attest step's outcome: it
// puts the HardwareModuleName into an attested board's certificate,
// applies its own attestation policy and records the outcome. The local
// CA (enroll/station/ca) is one; an Issuer that is not (EST) gets the CSR
// alone, after the jig's own checks.
type AttestingIssuer interface {
	Issuer
	IssueAttested(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) ([]*x509.Certificate, error)
	// RecordRefusal notes a board refused at the attest step.
	RecordRefusal(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) error
}

// Options tune Program.
type Options struct {
	// Verifier checks boards that offer attestation. nil: the jig does
	// not ask (as a jig from before attestation): outcome not-checked.
	Verifier Verifier
	// RequireAttestation refuses a board that does not offer attestation
	// (not-offered). It needs a Verifier.
	RequireAttestation bool
	// Rand is the nonce source; nil means crypto/rand.
	Rand io.Reader
	// Roots are the roots of the issuing CA. With them, a board that
	// reports state programmed is asked for its chain (CHAIN), and one
	// that holds a valid certificate from this CA for its key is left
	// alone (Result.AlreadyProgrammed). nil: every board is issued a
	// certificate, as a jig from before CHAIN.
	Roots *x509.CertPool
	// Reissue issues a new certificate to a board that holds a valid one
	// and then revokes the old serial; the Issuer must be a Revoker.
	Reissue bool
}

// attestStep runs the attest step for a board whose HELLO is h and whose
// CSR key is pub. A refused board is a *Refusal error along with its
// outcome; other errors (the bus, the jig's setup) come without one.
func attestStep(ctx context.Context, j *Jig, h *Hello, o Options, pub crypto.PublicKey) (station.Attestation, string, error) {
	start := time.Now()
	refuse := func(a station.Attestation, r *Refusal) (station.Attestation, string, error) {
		a.Outcome, a.Detail = station.RefusedPrefix+r.Reason, r.Detail
		return a, "", r
	}
	switch {
	case o.RequireAttestation && o.Verifier == nil:
		return station.Attestation{}, "", errors.New("attestation is required but this jig has no verifier (TPM roots)")
	case !h.Attest && o.RequireAttestation:
		return refuse(station.Attestation{}, &Refusal{Reason: ReasonNotOffered,
			Detail: fmt.Sprintf("the board offers no TPM attestation (no attest=1 in HELLO, key backend %s) and this line requires it", h.Key)})
	case !h.Attest:
		return station.Attestation{Outcome: station.NotOffered}, fmt.Sprintf("not offered by the board (key %s)", h.Key), nil
	case o.Verifier == nil:
		return station.Attestation{Outcome: station.NotChecked}, "offered by the board, not checked (no TPM roots on this jig)", nil
	}
	rnd := o.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	nonce := make([]byte, factory.NonceSize)
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return station.Attestation{}, "", fmt.Errorf("nonce: %w", err)
	}
	var a station.Attestation
	stmt, err := j.Attest(ctx, nonce)
	if r := deviceRefusal(err); r != nil {
		return refuse(a, r)
	}
	if err != nil {
		return a, "", err
	}
	a.EKSHA256 = ekSHA256(stmt)
	p, err := o.Verifier.Begin(stmt, nonce, pub)
	if err != nil {
		return verifierRefusal(a, err, refuse)
	}
	blob, secret := p.Challenge()
	got, err := j.Activate(ctx, blob, secret, h.Chunk)
	if r := deviceRefusal(err); r != nil {
		return refuse(a, r)
	}
	if err != nil {
		return a, "", err
	}
	res, err := p.Finish(got)
	if err != nil {
		return verifierRefusal(a, err, refuse)
	}
	if res == nil || res.EKCert == nil {
		return a, "", errors.New("verifier accepted the attestation but returned no EK certificate")
	}
	sum := sha256.Sum256(res.EKCert.Raw)
	a.Outcome, a.EKSHA256, a.HWType, a.HWSerialNum = station.Attested, hex.EncodeToString(sum[:]), res.HWType, res.HWSerialNum
	return a, fmt.Sprintf("ek %s serial %s, key in TPM (fixedTPM), %dms", res.EKCert.Issuer.CommonName,
		hex.EncodeToString(res.EKCert.SerialNumber.Bytes()), time.Since(start).Milliseconds()), nil
}

// verifierRefusal passes on the Verifier's *Refusal; any other error
// from it is not a verdict on the board.
func verifierRefusal(a station.Attestation, err error, refuse func(station.Attestation, *Refusal) (station.Attestation, string, error)) (station.Attestation, string, error) {
	var r *Refusal
	if errors.As(err, &r) {
		return refuse(a, r)
	}
	return a, "", fmt.Errorf("attestation verifier: %w", err)
}

// deviceRefusal maps the board's NAK of ATTEST or ACTIVATE to a Refusal;
// nil for no error and for errors that are not the board's verdict
// (no reply, a corrupt reply).
func deviceRefusal(err error) *Refusal {
	var nk *NAKError
	if !errors.As(err, &nk) {
		return nil
	}
	if nk.Reason == factory.ReasonAttest {
		cause, detail, _ := strings.Cut(nk.Detail, " ")
		switch cause {
		case factory.AttestNoEKCert:
			return &Refusal{Reason: ReasonNoEKCert, Detail: detail}
		case factory.AttestActivation:
			return &Refusal{Reason: ReasonActivation, Detail: "the board's TPM could not activate the credential: " + detail}
		}
	}
	return &Refusal{Reason: ReasonDeviceFailed, Detail: fmt.Sprintf("%s answered NAK %s %s", nk.Verb, nk.Reason, nk.Detail)}
}

// ekSHA256 is the hex SHA-256 of the EK certificate (x5c[0]) in a
// statement, for the record even when the Verifier refuses the rest; ""
// when the statement does not carry one.
func ekSHA256(stmt []byte) string {
	var s struct {
		X5C [][]byte `json:"x5c"`
	}
	if json.Unmarshal(stmt, &s) != nil || len(s.X5C) == 0 || len(s.X5C[0]) == 0 {
		return ""
	}
	sum := sha256.Sum256(s.X5C[0])
	return hex.EncodeToString(sum[:])
}
