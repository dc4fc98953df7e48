package ca

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"devid/enroll/csr"
	"devid/enroll/station"
	"devid/hal/board"
)

// OpenLedger opens a ledger without a CA directory, for an issuer that
// is not a Local CA (`devid-jig program --est`): url is a postgres://
// URL (docs/ca.md) and issuer the issuing CA certificate the database is
// bound to, the one whose ledger it is. retry bounds how long an
// operation waits for the database (0: DefaultLedgerRetry).
func OpenLedger(ctx context.Context, url string, issuer *x509.Certificate, retry time.Duration) (Ledger, error) {
	if url == "" || url == "file" {
		return nil, errors.New("ledger: an external issuer records in a shared ledger: give a postgres:// URL")
	}
	if err := checkLedgerURL(url); err != nil {
		return nil, fmt.Errorf("ledger %q: %w", redact(url), err)
	}
	sum := sha256.Sum256(issuer.Raw)
	return openPGLedger(ctx, url, hex.EncodeToString(sum[:]), retry)
}

// ExternalSigner is a CA other than this package's that signs device
// CSRs, such as an EST server (enroll/est's Client).
type ExternalSigner interface {
	Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error)
}

// Recorded is an ExternalSigner whose issuances are recorded in a Ledger
// with the rules of a Local CA (docs/ca.md, "Ledger"): the device/key
// binding is checked before the signer is asked, and the leaf it returns
// is recorded (Ledger.IssueExternal) before Issue returns it. It also
// answers the revocation check of programmed boards and the serial
// lookup, from the ledger.
type Recorded struct {
	Signer ExternalSigner
	Ledger Ledger
	// Issuer is the issuing CA the ledger is bound to: a leaf not signed
	// by it is refused (and not released).
	Issuer *x509.Certificate
	// Station names this jig in the records.
	Station string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Issue checks the CSR's device ID, asks the signer and records the leaf.
func (e *Recorded) Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return e.issue(ctx, req, nil)
}

// IssueAttested is Issue with the outcome of the jig's attest step,
// which the record keeps (outcome, EK certificate SHA-256). The external
// CA gets the CSR alone: it cannot put the HardwareModuleName into the
// certificate (docs/ca.md, "EST and the shared ledger").
func (e *Recorded) IssueAttested(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) ([]*x509.Certificate, error) {
	return e.issue(ctx, req, &a)
}

// RecordRefusal records a board refused at the attest step.
func (e *Recorded) RecordRefusal(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) error {
	fp, _ := csr.KeyFingerprint(req.PublicKey)
	return e.Ledger.Refuse(ctx, Record{Op: OpRefuse, Time: e.now().UTC(), Serial: NoSerial, DeviceID: req.Subject.CommonName,
		KeySHA256: fp, Station: e.Station, Attestation: a.Outcome, EKSHA256: a.EKSHA256, Reason: a.Detail})
}

// ErrExternalRevoke: the certificates of an external CA are revoked at
// that CA, not by the station.
var ErrExternalRevoke = errors.New("the EST CA's certificates are revoked at the EST CA, not by the station")

// RevokeSerial refuses: a certificate of the external CA is revoked
// there (its CRL is not this ledger's), so --reissue does not apply.
func (e *Recorded) RevokeSerial(serial, reason string) error {
	return fmt.Errorf("revoke serial %s: %w", serial, ErrExternalRevoke)
}

func (e *Recorded) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Recorded) issue(ctx context.Context, req *x509.CertificateRequest, a *station.Attestation) ([]*x509.Certificate, error) {
	id := req.Subject.CommonName
	if err := board.Validate(id); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	fp, err := csr.KeyFingerprint(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	var chain []*x509.Certificate
	rec := Record{Op: OpIssue, Time: e.now().UTC(), DeviceID: id, KeySHA256: fp, Station: e.Station}
	if a != nil {
		rec.Attestation, rec.EKSHA256 = a.Outcome, a.EKSHA256
	}
	err = e.Ledger.IssueExternal(ctx, rec, func() (*x509.Certificate, error) {
		c, err := e.Signer.Issue(ctx, req)
		if err != nil {
			return nil, err
		}
		if len(c) == 0 {
			return nil, errors.New("the external CA returned no certificate")
		}
		leaf := c[0]
		if leaf.Subject.CommonName != id {
			return nil, fmt.Errorf("the external CA issued serial %x for %q, not the device ID %q", leaf.SerialNumber, leaf.Subject.CommonName, id)
		}
		if e.Issuer != nil {
			if err := leaf.CheckSignatureFrom(e.Issuer); err != nil {
				return nil, fmt.Errorf("the external CA issued serial %x under %q, not the issuing CA the ledger is bound to (%q): %v",
					leaf.SerialNumber, leaf.Issuer.CommonName, e.Issuer.Subject.CommonName, err)
			}
		}
		chain = c
		return leaf, nil
	})
	if err != nil {
		if chain != nil {
			return nil, fmt.Errorf("certificate for %s not released: %w", id, err)
		}
		return nil, err
	}
	return chain, nil
}

// SerialRevoked reports whether the ledger marks serial revoked.
func (e *Recorded) SerialRevoked(serial string) (bool, error) {
	serial, err := normSerial(serial)
	if err != nil {
		return false, err
	}
	r, err := e.Ledger.IssuedSerial(context.Background(), serial)
	if errors.Is(err, ErrNotIssued) {
		return false, nil
	}
	return r.Status == StatusRevoked, err
}

// IssuedSerial returns the ledger's record of serial (hex), nil if it has
// none.
func (e *Recorded) IssuedSerial(serial string) (*Record, error) {
	return issuedSerial(e.Ledger, serial)
}

// IssuedSerial returns the ledger's record of serial (hex), with its
// Status, or nil if the ledger has none: the station's web page finds the
// device of a serial with it.
func (l *Local) IssuedSerial(serial string) (*Record, error) {
	return issuedSerial(l.ledger, serial)
}

func issuedSerial(l Ledger, serial string) (*Record, error) {
	serial, err := normSerial(serial)
	if err != nil {
		return nil, err
	}
	r, err := l.IssuedSerial(context.Background(), serial)
	if errors.Is(err, ErrNotIssued) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// Issued returns the ledger's issue records for a device ID.
func (e *Recorded) Issued(deviceID string) ([]Record, error) {
	return e.Ledger.Issued(context.Background(), deviceID)
}

// Refused returns the ledger's refuse records for a device ID.
func (e *Recorded) Refused(deviceID string) ([]Record, error) {
	return e.Ledger.Refused(context.Background(), deviceID)
}
