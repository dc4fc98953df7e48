package dps

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Registration status values of a DPS operation.
const (
	StatusUnassigned = "unassigned"
	StatusAssigning  = "assigning"
	StatusAssigned   = "assigned"
	StatusFailed     = "failed"
	StatusDisabled   = "disabled"
	statusBlacklist  = "blacklisted" // legacy; treated as failed
)

// OperationStatus is the body of a 200/202 DPS response
// (RegistrationOperationStatus).
type OperationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *RegistrationState `json:"registrationState,omitempty"`
}

// RegistrationState is DeviceRegistrationResult, every field of the
// device TypeSpec model. Unknown fields are ignored; Raw keeps the exact
// bytes for callers that want them.
type RegistrationState struct {
	X509                   *X509RegistrationResult `json:"x509,omitempty"`
	SymmetricKey           *EnrollmentGroupRef     `json:"symmetricKey,omitempty"`
	TPM                    json.RawMessage         `json:"tpm,omitempty"`
	RegistrationID         string                  `json:"registrationId,omitempty"`
	CreatedDateTimeUTC     string                  `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                  `json:"assignedHub,omitempty"`
	DeviceID               string                  `json:"deviceId,omitempty"`
	Status                 string                  `json:"status,omitempty"`
	Substatus              string                  `json:"substatus,omitempty"`
	ErrorCode              JSONInt                 `json:"errorCode,omitempty"`
	ErrorMessage           string                  `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC string                  `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                  `json:"etag,omitempty"`
	Payload                json.RawMessage         `json:"payload,omitempty"`
	IssuedCertificateChain []string                `json:"issuedCertificateChain,omitempty"`
	ConnectionProfile      string                  `json:"connectionProfile,omitempty"`
}

// X509RegistrationResult is registrationState.x509.
type X509RegistrationResult struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// EnrollmentGroupRef is registrationState.symmetricKey.
type EnrollmentGroupRef struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// X509CertificateInfo describes a certificate DPS saw.
type X509CertificateInfo struct {
	SubjectName      string  `json:"subjectName,omitempty"`
	SHA1Thumbprint   string  `json:"sha1Thumbprint,omitempty"`
	SHA256Thumbprint string  `json:"sha256Thumbprint,omitempty"`
	IssuerName       string  `json:"issuerName,omitempty"`
	NotBeforeUTC     string  `json:"notBeforeUtc,omitempty"`
	NotAfterUTC      string  `json:"notAfterUtc,omitempty"`
	SerialNumber     string  `json:"serialNumber,omitempty"`
	Version          JSONInt `json:"version,omitempty"`
}

// JSONInt is an int that accepts a JSON number or a numeric string: error codes are
// int32 in the spec, but strings have been seen from proxies and older
// services, and a parse failure must not hide the rest of the reply.
type JSONInt int

func (f *JSONInt) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			return nil
		}
		b = []byte(s)
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		fl, ferr := strconv.ParseFloat(string(b), 64)
		if ferr != nil {
			return fmt.Errorf("number %q: %w", b, err)
		}
		n = int64(fl)
	}
	*f = JSONInt(n)
	return nil
}

// ServiceError is the body of a 4xx/5xx DPS response
// (ProvisioningServiceErrorDetails), also used by the hub's twin and
// credential channels.
type ServiceError struct {
	ErrorCode    JSONInt         `json:"errorCode"`
	TrackingID   string          `json:"trackingId"`
	Message      string          `json:"message"`
	ErrorMessage string          `json:"errorMessage"`
	TimestampUTC string          `json:"timestampUtc"`
	Info         json.RawMessage `json:"info"`
	RetryAfter   JSONInt         `json:"retryAfter"`
}

// ParseOperationStatus decodes a 200/202 body. An empty operationId is
// allowed here (the caller decides: reuse the cached one or restart).
func ParseOperationStatus(body []byte) (*OperationStatus, error) {
	var op OperationStatus
	if err := json.Unmarshal(body, &op); err != nil {
		return nil, &ProtocolError{What: "operation status body", Raw: string(body), Err: err}
	}
	if op.Status == "" && op.RegistrationState != nil {
		op.Status = op.RegistrationState.Status
	}
	op.Status = strings.ToLower(op.Status)
	switch op.Status {
	case StatusUnassigned, StatusAssigning, StatusAssigned, StatusFailed, StatusDisabled, statusBlacklist:
	default:
		return nil, &ProtocolError{What: "operation status", Raw: string(body), Err: fmt.Errorf("unknown status %q", op.Status)}
	}
	if op.Status == StatusAssigned {
		rs := op.RegistrationState
		if rs == nil || rs.AssignedHub == "" || rs.DeviceID == "" {
			return nil, &ProtocolError{What: "assigned result", Raw: string(body), Err: errors.New("no registrationState.assignedHub/deviceId")}
		}
	}
	return &op, nil
}

// parseStatusError builds a StatusError from a non-2xx response. A body
// that is not JSON is kept as the message.
func parseStatusError(op string, r Response, body []byte) *StatusError {
	e := &StatusError{Op: op, Status: r.Status, RetryAfter: r.RetryAfter}
	var se ServiceError
	if len(bytes.TrimSpace(body)) == 0 {
		return e
	}
	if err := json.Unmarshal(body, &se); err != nil {
		e.Message = shorten(strings.TrimSpace(string(body)), 300)
		return e
	}
	e.ErrorCode = int(se.ErrorCode)
	e.TrackingID = se.TrackingID
	e.Message = se.Message
	if e.Message == "" {
		e.Message = se.ErrorMessage
	}
	e.TimestampUTC = se.TimestampUTC
	if len(se.Info) > 0 {
		info := map[string]any{}
		if json.Unmarshal(se.Info, &info) == nil {
			e.Info = map[string]string{}
			for k, v := range info {
				if s, ok := v.(string); ok {
					e.Info[k] = s
				} else {
					b, _ := json.Marshal(v)
					e.Info[k] = string(b)
				}
			}
		}
	}
	if !r.HasRetry && se.RetryAfter > 0 {
		e.RetryAfter = secs(int64(se.RetryAfter))
	}
	return e
}

// ParseIssuedChain decodes registrationState.issuedCertificateChain:
// base64 DER entries, leaf first. PEM entries are accepted too.
func ParseIssuedChain(entries []string) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for i, s := range entries {
		der, err := decodeCertEntry(s)
		if err != nil {
			return nil, &ProtocolError{What: fmt.Sprintf("issuedCertificateChain[%d]", i), Raw: s, Err: err}
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, &ProtocolError{What: fmt.Sprintf("issuedCertificateChain[%d]", i), Raw: s, Err: err}
		}
		chain = append(chain, c)
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, &ProtocolError{What: "issuedCertificateChain order", Raw: chain[i].Subject.String(),
				Err: fmt.Errorf("entry %d is not signed by entry %d: %w", i, i+1, err)}
		}
	}
	return chain, nil
}

func decodeCertEntry(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-----BEGIN") {
		s = strings.TrimPrefix(s, "-----BEGIN CERTIFICATE-----")
		s, _, _ = strings.Cut(s, "-----END")
	}
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	if der, err := base64.StdEncoding.DecodeString(s); err == nil {
		return der, nil
	}
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}
