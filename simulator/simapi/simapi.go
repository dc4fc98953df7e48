// Package simapi holds the wire types of devid-sim's own interfaces: the
// ready line it prints when it starts and the bodies of its /sim control
// calls (faults, revocation, C2D, telemetry, connections). The server
// (package simulator), the subprocess starter (simproc) and the test
// harness (simtest) share these one definitions.
//
// It imports only the standard library, so a tool can speak to a running
// simulator without linking the broker or the state database. The
// Azure-shaped service API (enrollments, registrations, devices, twins)
// keeps its types in package simulator. docs/simulator.md describes every
// call.
package simapi

import (
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Ready is the JSON line devid-sim prints on stdout once every listener
// accepts (also written to STATE/ready.json).
type Ready struct {
	IDScope    string   `json:"id_scope"`
	DPS        Endpoint `json:"dps"`
	Hubs       []Hub    `json:"hubs"`
	ControlURL string   `json:"control_url"`
	ESTURL     string   `json:"est_url"`
	CRLURL     string   `json:"crl_url"`
	ServerCA   string   `json:"server_ca"`
	IssuingCA  string   `json:"issuing_ca"`
	// IssuingChain, StateDir and PID extend the original contract, which
	// allows more fields.
	IssuingChain string `json:"issuing_chain"`
	StateDir     string `json:"state_dir"`
	PID          int    `json:"pid"`
	// ControlTokenFile names the file of the bearer token the control
	// plane requires (devid-sim serve --control-token-file); empty when
	// it requires none. The token itself is never in the ready line.
	ControlTokenFile string `json:"control_token_file,omitempty"`
}

// ReadControlToken reads a control-plane token file: one line, at least
// 16 characters, printable ASCII with no spaces.
func ReadControlToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("%s: the token is %d characters; at least 16 are needed", path, len(tok))
	}
	for _, c := range tok {
		if c <= ' ' || c > '~' {
			return "", fmt.Errorf("%s: the token must be printable ASCII without spaces", path)
		}
	}
	return tok, nil
}

// Authorize adds the bearer token of r's control_token_file, if any, to
// a control-plane request.
func (r Ready) Authorize(req *http.Request) error {
	if r.ControlTokenFile == "" {
		return nil
	}
	tok, err := ReadControlToken(r.ControlTokenFile)
	if err != nil {
		return fmt.Errorf("control token: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}

// Endpoint is the DPS endpoint of the ready line. Clients dial Addr (or
// WSAddr) and use Host as TLS server name and in the MQTT username.
type Endpoint struct {
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
}

// Hub is one IoT hub of the ready line.
type Hub struct {
	Name   string `json:"name"`
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
}

// Fault is the body of POST /sim/faults and an element of GET /sim/faults.
// It matches connections of Scope ("dps", "hub" or "" for both),
// optionally one Hub and one DeviceID (the registration ID on DPS); an
// empty DeviceID matches every device.
type Fault struct {
	// ID names the fault; the simulator assigns one when it is empty.
	ID       string `json:"id,omitempty"`
	Scope    string `json:"scope,omitempty"`
	Hub      string `json:"hub,omitempty"`
	DeviceID string `json:"deviceId,omitempty"`
	// Ops limits the fault to some operations: register, poll (DPS);
	// telemetry, twin, method, connect, credentials (hub; a delay on
	// credentials holds the 200 of a certificate request). Empty = all.
	Ops []string `json:"ops,omitempty"`
	// Status answers requests with this status (429 or 5xx). On DPS the
	// response topic carries it (with retry-after for 429); on the hub,
	// twin requests get it and telemetry gets the connection closed, which
	// is how the real hub throttles MQTT devices.
	Status     int `json:"status,omitempty"`
	RetryAfter int `json:"retryAfter,omitempty"`
	// DelayMs delays every matching response by this much.
	DelayMs int `json:"delayMs,omitempty"`
	// DropAfter closes a connection when it publishes its DropAfter+1-th
	// message.
	DropAfter int `json:"dropAfter,omitempty"`
	// RefuseSeconds refuses new connections (closed right after the TLS
	// handshake, no CONNACK) for this long from when the fault is set.
	RefuseSeconds int `json:"refuseSeconds,omitempty"`
	// Count is how many times Status is applied before the fault removes
	// itself; 0 = until deleted.
	Count int `json:"count,omitempty"`

	// RefuseUntil (RFC 3339) and Applied are reported by the simulator;
	// values sent in a request are ignored.
	RefuseUntil string `json:"refuseUntil,omitempty"`
	Applied     int    `json:"applied"`
}

// RevokeRequest is the body of POST /sim/revoke. It names what to revoke:
// a certificate (PEM), a thumbprint (SHA-1 or SHA-256 hex), a serial
// number (hex, optional issuer DN), a hub device (its registered
// thumbprints) or every serial of a CRL.
type RevokeRequest struct {
	Certificate string `json:"certificate,omitempty"`
	Thumbprint  string `json:"thumbprint,omitempty"`
	Serial      string `json:"serial,omitempty"`
	Issuer      string `json:"issuer,omitempty"`
	Hub         string `json:"hub,omitempty"`
	DeviceID    string `json:"deviceId,omitempty"`
	// CRL (PEM, DER or base64 DER) revokes every listed serial issued by
	// the CA that signed it; Chain (PEM) may add CA certificates between
	// an enrollment group's signing certificate and the CRL signer.
	CRL   string `json:"crl,omitempty"`
	Chain string `json:"chain,omitempty"`
}

// C2DRequest is the body of POST /sim/c2d (and of the hub service API's
// POST /devices/{id}/messages/deviceBound, which takes hub and device from
// the path).
type C2DRequest struct {
	Hub           string            `json:"hub,omitempty"`
	DeviceID      string            `json:"deviceId"`
	Payload       string            `json:"payload,omitempty"`
	PayloadBase64 string            `json:"payloadBase64,omitempty"`
	Properties    map[string]string `json:"properties,omitempty"`
	MessageID     string            `json:"messageId,omitempty"`
	CorrelationID string            `json:"correlationId,omitempty"`
	ContentType   string            `json:"contentType,omitempty"`
	ContentEnc    string            `json:"contentEncoding,omitempty"`
	// Ack is none (default), positive, negative or full.
	Ack string `json:"ack,omitempty"`
}

// TelemetryRecord is one recorded device-to-cloud message, as GET
// /sim/telemetry returns it.
type TelemetryRecord struct {
	Seq         uint64 `json:"seq"`
	Hub         string `json:"hub"`
	DeviceID    string `json:"deviceId"`
	ModuleID    string `json:"moduleId,omitempty"`
	ReceivedUtc string `json:"receivedUtc"`
	Topic       string `json:"topic"`
	QoS         byte   `json:"qos"`
	// Body is the payload when it is valid UTF-8; BodyBase64 always.
	Body                  string            `json:"body"`
	BodyBase64            string            `json:"bodyBase64"`
	SystemProperties      map[string]string `json:"systemProperties"`
	ApplicationProperties map[string]string `json:"applicationProperties"`
	// MessageID is the message's $.mid (also systemProperties.messageId).
	MessageID string `json:"messageId,omitempty"`
	// Duplicates counts the earlier messages from this device on this hub
	// that carried the same MessageID: 0 for a first delivery, 1 for the
	// first resend, and so on (always 0 without a MessageID).
	Duplicates int `json:"duplicates"`
}

// ConnectionInfo describes one live MQTT connection (GET /sim/connections).
type ConnectionInfo struct {
	Endpoint   string `json:"endpoint"` // "dps" or hub name
	ID         string `json:"id"`
	APIVersion string `json:"apiVersion"`
	Remote     string `json:"remote"`
	Listener   string `json:"listener"`
	Subject    string `json:"subject"`
}
