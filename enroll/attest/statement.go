package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"devid/hal/tpm"
)

// Statement is the device-attest-01 "tpm" attestation statement plus the
// AK's public area: the AK is proven by credential activation against
// the EK, not by an AK certificate.
type Statement struct {
	Ver      string   `json:"ver"`      // "2.0"
	Alg      int64    `json:"alg"`      // COSE algorithm of Sig: -7 (ES256) for the ECC P-256 AK
	X5C      [][]byte `json:"x5c"`      // DER: the EK certificate first, then any intermediates
	Sig      []byte   `json:"sig"`      // the AK's ASN.1 DER ECDSA signature over CertInfo
	CertInfo []byte   `json:"certInfo"` // TPMS_ATTEST from TPM2_Certify (without the TPM2B size)
	PubArea  []byte   `json:"pubArea"`  // TPMT_PUBLIC of the certified (DevID) key
	AKPub    []byte   `json:"akPub"`    // TPMT_PUBLIC of the AK
}

// Values of Statement.Ver and Statement.Alg.
const (
	StatementVersion = "2.0"
	AlgES256         = -7
)

// Size bounds of a statement and its fields (bytes, after base64
// decoding for the fields). They are generous for what a TPM produces.
const (
	MaxStatementSize = 32 << 10
	MaxCerts         = 4
	MaxCertSize      = 4096
	MaxSigSize       = 256
	MaxTPMStructSize = 1024
)

// FromTPM wraps what (*tpm.TPM).Attest returned in a Statement.
func FromTPM(a *tpm.Attestation) *Statement {
	return &Statement{
		Ver: StatementVersion, Alg: AlgES256,
		X5C: a.EKCerts, Sig: a.Sig, CertInfo: a.CertInfo, PubArea: a.PubArea, AKPub: a.AKPub,
	}
}

// Marshal encodes the statement as JSON.
func (s *Statement) Marshal() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// ParseStatement decodes a statement strictly: one JSON object, no
// unknown or missing fields, no trailing data, every field within its
// size bound. Errors name what was wrong.
func ParseStatement(b []byte) (*Statement, error) {
	if len(b) > MaxStatementSize {
		return nil, fmt.Errorf("attestation statement is %d bytes, more than %d", len(b), MaxStatementSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s Statement
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("attestation statement: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("attestation statement: trailing data after the JSON object")
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return &s, nil
}

// check enforces presence and size bounds.
func (s *Statement) check() error {
	switch {
	case s.Ver != StatementVersion:
		return fmt.Errorf("attestation statement: ver %q, want %q", s.Ver, StatementVersion)
	case s.Alg != AlgES256:
		return fmt.Errorf("attestation statement: alg %d, want %d (ES256)", s.Alg, AlgES256)
	case len(s.X5C) > MaxCerts:
		return fmt.Errorf("attestation statement: x5c has %d certificates, more than %d", len(s.X5C), MaxCerts)
	}
	for i, c := range s.X5C {
		if len(c) == 0 || len(c) > MaxCertSize {
			return fmt.Errorf("attestation statement: x5c[%d] is %d bytes, want 1 to %d", i, len(c), MaxCertSize)
		}
	}
	for _, f := range []struct {
		name string
		b    []byte
		max  int
	}{
		{"sig", s.Sig, MaxSigSize},
		{"certInfo", s.CertInfo, MaxTPMStructSize},
		{"pubArea", s.PubArea, MaxTPMStructSize},
		{"akPub", s.AKPub, MaxTPMStructSize},
	} {
		if len(f.b) == 0 || len(f.b) > f.max {
			return fmt.Errorf("attestation statement: %s is %d bytes, want 1 to %d", f.name, len(f.b), f.max)
		}
	}
	return nil
}
