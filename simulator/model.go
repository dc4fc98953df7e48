package simulator

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Azure JSON shapes (DPS service API 2021-10-01 and IoT Hub service API
// 2021-04-12). Field names follow the service exactly so existing tools and
// SDK models can talk to the control plane.

// X509CertificateInfo mirrors the DPS X509CertificateInfo model.
type X509CertificateInfo struct {
	SubjectName      string `json:"subjectName"`
	SHA1Thumbprint   string `json:"sha1Thumbprint"`
	SHA256Thumbprint string `json:"sha256Thumbprint"`
	IssuerName       string `json:"issuerName"`
	NotBeforeUtc     string `json:"notBeforeUtc"`
	NotAfterUtc      string `json:"notAfterUtc"`
	SerialNumber     string `json:"serialNumber"`
	Version          int    `json:"version"`
}

// X509CertificateWithInfo is a certificate (PEM or base64 DER) plus its info.
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509Certificates holds a primary and optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CAReferences names CA certificates uploaded to the DPS instance.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// X509Attestation is the x509 part of an attestation mechanism.
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// Attestation is an enrollment's attestation mechanism; only x509 is
// supported by the simulator.
type Attestation struct {
	Type string           `json:"type"`
	X509 *X509Attestation `json:"x509,omitempty"`
}

// ReprovisionPolicy controls what happens when a registered device
// registers again. Both default to true.
type ReprovisionPolicy struct {
	UpdateHubAssignment *bool `json:"updateHubAssignment,omitempty"`
	MigrateDeviceData   *bool `json:"migrateDeviceData,omitempty"`
}

// InitialTwin is applied to the hub twin when DPS creates or resets a device.
type InitialTwin struct {
	Tags       map[string]any `json:"tags,omitempty"`
	Properties struct {
		Desired map[string]any `json:"desired,omitempty"`
	} `json:"properties"`
}

// CustomAllocationDefinition names the webhook for "custom" allocation.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion,omitempty"`
}

// Enrollment is an enrollment group (EnrollmentGroupID set) or an
// individual enrollment (RegistrationID set).
type Enrollment struct {
	EnrollmentGroupID          string                      `json:"enrollmentGroupId,omitempty"`
	RegistrationID             string                      `json:"registrationId,omitempty"`
	DeviceID                   string                      `json:"deviceId,omitempty"`
	Attestation                Attestation                 `json:"attestation"`
	Capabilities               map[string]any              `json:"capabilities,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	Etag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         string                      `json:"provisioningStatus"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUtc         string                      `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUtc     string                      `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           string                      `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	// Sim extension: lifetime of certificates issued for a "csr" (default 30 days).
	IssuedCertificateValidityDays int `json:"x-sim-issuedCertificateValidityDays,omitempty"`
	// Sim extension: the credential policy that issues certificates for a
	// "csr" (on Azure, the ADR credential policy linked to the enrollment,
	// az iot dps enrollment-group create --credential-policy). Empty: the
	// enrollment does not offer certificate issuance, as on Azure by default.
	CredentialPolicy string `json:"x-sim-credentialPolicy,omitempty"`

	certs []*x509.Certificate // parsed attestation certificates (primary, secondary)
}

func (e *Enrollment) isGroup() bool { return e.EnrollmentGroupID != "" }

// key is the enrollment's storage key. Individual enrollments are matched
// case-insensitively (s.indiv is keyed in lower case), so the stored key is
// lower case too: a PUT of "Dev1" then "dev1" updates one record.
func (e *Enrollment) key() string {
	if e.isGroup() {
		return e.EnrollmentGroupID
	}
	return strings.ToLower(e.RegistrationID)
}

func (e *Enrollment) enabled() bool { return e.ProvisioningStatus != "disabled" }

func (e *Enrollment) updateHub() bool {
	return e.ReprovisionPolicy == nil || e.ReprovisionPolicy.UpdateHubAssignment == nil || *e.ReprovisionPolicy.UpdateHubAssignment
}

func (e *Enrollment) migrate() bool {
	return e.ReprovisionPolicy == nil || e.ReprovisionPolicy.MigrateDeviceData == nil || *e.ReprovisionPolicy.MigrateDeviceData
}

// prepare validates the enrollment, parses its certificates and fills in
// the info blocks the service returns.
func (e *Enrollment) prepare() error {
	if e.Attestation.Type == "" {
		e.Attestation.Type = "x509"
	}
	if e.Attestation.Type != "x509" || e.Attestation.X509 == nil {
		return fmt.Errorf("attestation: only type \"x509\" with an x509 block is supported, got %q", e.Attestation.Type)
	}
	var set *X509Certificates
	if e.isGroup() {
		set = e.Attestation.X509.SigningCertificates
		if set == nil {
			return fmt.Errorf("attestation.x509.signingCertificates is required for an enrollment group (caReferences are not supported)")
		}
	} else {
		set = e.Attestation.X509.ClientCertificates
		if set == nil {
			return fmt.Errorf("attestation.x509.clientCertificates is required for an individual enrollment")
		}
	}
	e.certs = nil
	for i, c := range []*X509CertificateWithInfo{set.Primary, set.Secondary} {
		if c == nil {
			if i == 0 {
				return fmt.Errorf("attestation: primary certificate is required")
			}
			continue
		}
		if c.Certificate == "" && c.Info != nil && e.certs != nil {
			continue // stored form (certificate dropped, info kept)
		}
		certs, err := ParsePEMCerts([]byte(c.Certificate))
		if err != nil {
			return fmt.Errorf("attestation: %s certificate: %w", []string{"primary", "secondary"}[i], err)
		}
		if e.isGroup() && !certs[0].IsCA {
			return fmt.Errorf("attestation: %s signing certificate %q is not a CA certificate", []string{"primary", "secondary"}[i], certs[0].Subject.CommonName)
		}
		e.certs = append(e.certs, certs[0])
		c.Info = certInfo(certs[0])
	}
	switch e.ProvisioningStatus {
	case "":
		e.ProvisioningStatus = "enabled"
	case "enabled", "disabled":
	default:
		return fmt.Errorf("provisioningStatus %q is not enabled or disabled", e.ProvisioningStatus)
	}
	switch e.AllocationPolicy {
	case "", "hashed", "geoLatency", "static", "custom":
	case "geolatency", "GeoLatency":
		e.AllocationPolicy = "geoLatency"
	case "Hashed":
		e.AllocationPolicy = "hashed"
	case "Static":
		e.AllocationPolicy = "static"
	default:
		return fmt.Errorf("allocationPolicy %q is not hashed, geoLatency, static or custom", e.AllocationPolicy)
	}
	if e.AllocationPolicy == "custom" && (e.CustomAllocationDefinition == nil || e.CustomAllocationDefinition.WebhookURL == "") {
		return fmt.Errorf("allocationPolicy custom needs customAllocationDefinition.webhookUrl")
	}
	if !e.isGroup() && e.RegistrationID == "" {
		return fmt.Errorf("registrationId is required")
	}
	return nil
}

func certInfo(c *x509.Certificate) *X509CertificateInfo {
	s1, s256 := Thumbprints(c)
	return &X509CertificateInfo{
		SubjectName:      c.Subject.String(),
		SHA1Thumbprint:   s1,
		SHA256Thumbprint: s256,
		IssuerName:       c.Issuer.String(),
		NotBeforeUtc:     c.NotBefore.UTC().Format(time.RFC3339),
		NotAfterUtc:      c.NotAfter.UTC().Format(time.RFC3339),
		SerialNumber:     fmt.Sprintf("%X", c.SerialNumber),
		Version:          c.Version,
	}
}

// RegistrationState is DPS's DeviceRegistrationResult.
type RegistrationState struct {
	X509                   *RegistrationX509 `json:"x509,omitempty"`
	RegistrationID         string            `json:"registrationId"`
	CreatedDateTimeUtc     string            `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string            `json:"assignedHub,omitempty"`
	DeviceID               string            `json:"deviceId,omitempty"`
	Status                 string            `json:"status"`
	Substatus              string            `json:"substatus,omitempty"`
	ErrorCode              int               `json:"errorCode,omitempty"`
	ErrorMessage           string            `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUtc string            `json:"lastUpdatedDateTimeUtc,omitempty"`
	Etag                   string            `json:"etag,omitempty"`
	Payload                json.RawMessage   `json:"payload,omitempty"`
	IssuedCertificateChain []string          `json:"issuedCertificateChain,omitempty"`
	ConnectionProfile      string            `json:"connectionProfile,omitempty"`
}

// RegistrationX509 is the x509 block of a registration result.
type RegistrationX509 struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// Registration is the simulator's record of one registration ID.
type Registration struct {
	State RegistrationState `json:"state"`
	// Operation in progress or last completed.
	OperationID string `json:"operationId"`
	PollsLeft   int    `json:"pollsLeft"`
	// Pending result applied when the operation completes.
	PendingHub       string          `json:"pendingHub,omitempty"`
	PendingDeviceID  string          `json:"pendingDeviceId,omitempty"`
	PendingSubstatus string          `json:"pendingSubstatus,omitempty"`
	PendingStatus    string          `json:"pendingStatus,omitempty"`
	PendingError     int             `json:"pendingError,omitempty"`
	PendingMessage   string          `json:"pendingMessage,omitempty"`
	PendingTwin      *InitialTwin    `json:"pendingTwin,omitempty"`
	PendingPayload   json.RawMessage `json:"pendingPayload,omitempty"`
	ResetTwin        bool            `json:"resetTwin,omitempty"`
	IssuedChain      []string        `json:"issuedChain,omitempty"`
	LeafSHA1         string          `json:"leafSha1,omitempty"`
	LeafSHA256       string          `json:"leafSha256,omitempty"`
	// HubHistory lists hubs the device was assigned to, oldest first.
	HubHistory []string `json:"hubHistory,omitempty"`
	Disabled   bool     `json:"disabled,omitempty"` // sim: registration disabled via /sim
}

// Device is an IoT Hub device identity (service API shape).
type Device struct {
	DeviceID                   string         `json:"deviceId"`
	GenerationID               string         `json:"generationId"`
	Etag                       string         `json:"etag"`
	ConnectionState            string         `json:"connectionState"`
	Status                     string         `json:"status"`
	StatusReason               string         `json:"statusReason,omitempty"`
	ConnectionStateUpdatedTime string         `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          string         `json:"statusUpdatedTime"`
	LastActivityTime           string         `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
	Capabilities               map[string]any `json:"capabilities"`
}

// Authentication is a hub device's authentication mechanism.
type Authentication struct {
	Type           string          `json:"type"` // selfSigned | certificateAuthority
	X509Thumbprint *X509Thumbprint `json:"x509Thumbprint,omitempty"`
}

// X509Thumbprint holds a device's registered certificate thumbprints
// (SHA-1 or SHA-256 hex).
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint,omitempty"`
	SecondaryThumbprint string `json:"secondaryThumbprint,omitempty"`
}

// TwinState is the stored twin of a device.
type TwinState struct {
	Tags            map[string]any `json:"tags"`
	Desired         map[string]any `json:"desired"`
	DesiredVersion  int            `json:"desiredVersion"`
	Reported        map[string]any `json:"reported"`
	ReportedVersion int            `json:"reportedVersion"`
	Version         int            `json:"version"`
}

// C2DMessage is a queued cloud-to-device message.
type C2DMessage struct {
	MessageID  string     `json:"messageId"`
	Payload    []byte     `json:"payload"`
	Properties []Property `json:"properties,omitempty"`
	Ack        string     `json:"ack,omitempty"`
	EnqueuedAt string     `json:"enqueuedTimeUtc"`
	Delivered  int        `json:"deliveryCount"`
}

// DeviceRecord is what the simulator stores per hub device.
type DeviceRecord struct {
	Hub    string       `json:"hub"`
	Device Device       `json:"device"`
	Twin   TwinState    `json:"twin"`
	C2D    []C2DMessage `json:"c2d,omitempty"`
	// CAIssued: sim extension for devices whose certificate came from the
	// simulator's issuing CA (DPS csr): any certificate chaining to that CA
	// with CN == deviceId is accepted, like ADR credential sync.
	CAIssued bool `json:"caIssued,omitempty"`
}

// ErrorBody is the DPS/Hub error body shape.
type ErrorBody struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message,omitempty"`
	ErrorMessage string            `json:"errorMessage,omitempty"`
	TimestampUtc string            `json:"timestampUtc"`
	Info         map[string]string `json:"info,omitempty"`
	RetryAfter   int               `json:"retryAfter,omitempty"`
}

func nowUTC() string { return time.Now().UTC().Format("2006-01-02T15:04:05.0000000Z") }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// newEtag mimics the observed DPS etag: base64 of a quoted GUID-like string.
func newEtag() string {
	return base64.StdEncoding.EncodeToString([]byte(`"` + newUUID() + `"`))
}

func newOperationID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("4.%x.%s", b, newUUID())
}

func errorBody(code int, msg string) ErrorBody {
	return ErrorBody{ErrorCode: code, TrackingID: newUUID(), Message: msg, TimestampUtc: nowUTC()}
}

func newDevice(id string) Device {
	now := nowUTC()
	return Device{
		DeviceID:                   id,
		GenerationID:               fmt.Sprintf("63%016d", time.Now().UnixNano()%1e16),
		Etag:                       newEtag(),
		ConnectionState:            "Disconnected",
		Status:                     "enabled",
		ConnectionStateUpdatedTime: now,
		StatusUpdatedTime:          now,
		LastActivityTime:           "0001-01-01T00:00:00Z",
		Capabilities:               map[string]any{"iotEdge": false},
	}
}

func newTwin() TwinState {
	return TwinState{Tags: map[string]any{}, Desired: map[string]any{}, Reported: map[string]any{}, DesiredVersion: 1, ReportedVersion: 1, Version: 1}
}

// cloneMap deep-copies a JSON object (nil becomes empty).
func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}
