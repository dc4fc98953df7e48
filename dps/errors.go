package dps

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinels for errors.Is. Every typed error below matches exactly one
// of the "kind" sentinels, and some also match a "meaning" sentinel
// (ErrNotAuthorized, ErrThrottled) that callers branch on.
var (
	ErrDNS        = errors.New("dps: dns")
	ErrTCP        = errors.New("dps: tcp")
	ErrProxy      = errors.New("dps: proxy")
	ErrWebSocket  = errors.New("dps: websocket")
	ErrTLS        = errors.New("dps: tls")
	ErrConnack    = errors.New("dps: connack refused")
	ErrClosed     = errors.New("dps: connection closed by server")
	ErrStatus     = errors.New("dps: service status")
	ErrDisabled   = errors.New("dps: registration disabled")
	ErrFailed     = errors.New("dps: registration failed")
	ErrTimeout    = errors.New("dps: timeout")
	ErrProtocol   = errors.New("dps: protocol")
	ErrConfig     = errors.New("dps: config")
	ErrHubClosed  = errors.New("dps: hub client closed")
	ErrTooLarge   = errors.New("dps: message too large")
	ErrNoResponse = errors.New("dps: no response")

	// ErrNotAuthorized matches every refusal of the device's identity:
	// CONNACK 4/5, DPS 401/403, a TLS alert rejecting the client
	// certificate. On a hub it means: re-provision through DPS.
	ErrNotAuthorized = errors.New("dps: not authorized")
	// ErrThrottled matches DPS or twin status 429.
	ErrThrottled = errors.New("dps: throttled")
	// ErrNotIssued: a register request carried a CSR, and DPS assigned
	// the device without an issuedCertificateChain: the enrollment does
	// not issue certificates (no credential policy). Register returns the
	// Result with it: the assignment itself is valid.
	ErrNotIssued = errors.New("dps: a CSR was sent but DPS issued no certificate (issuedCertificateChain missing: does the enrollment have certificate issuance?)")
	// ErrRequestActive matches a hub certificate request refused because
	// another one is still active (409 / 409005): see RequestActiveError.
	ErrRequestActive = errors.New("dps: certificate request already active")
)

// Retryable reports whether err (or the first typed error in its chain)
// is worth retrying with the same inputs after a backoff. Unknown errors
// are treated as retryable: a device should not give up on an error it
// cannot classify.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	return true
}

// DNSError: the host name could not be resolved.
type DNSError struct {
	Host string
	Err  error
}

func (e *DNSError) Error() string        { return fmt.Sprintf("dns lookup %s: %v", e.Host, e.Err) }
func (e *DNSError) Unwrap() error        { return e.Err }
func (e *DNSError) Is(target error) bool { return target == ErrDNS }
func (e *DNSError) Retryable() bool      { return true }

// TCPError: the TCP connection could not be opened or broke before the
// TLS handshake finished.
type TCPError struct {
	Addr string
	Err  error
}

func (e *TCPError) Error() string        { return fmt.Sprintf("tcp connect %s: %v", e.Addr, e.Err) }
func (e *TCPError) Unwrap() error        { return e.Err }
func (e *TCPError) Is(target error) bool { return target == ErrTCP }
func (e *TCPError) Retryable() bool      { return true }

// ProxyError: the HTTP CONNECT proxy could not be reached or refused the
// tunnel. StatusCode is 0 when the proxy was not reached.
type ProxyError struct {
	Proxy      string // host:port of the proxy
	Target     string // host:port asked for in CONNECT
	StatusCode int
	Status     string
	Err        error
}

func (e *ProxyError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("proxy %s: CONNECT %s refused: %s", e.Proxy, e.Target, e.Status)
	}
	return fmt.Sprintf("proxy %s: CONNECT %s: %v", e.Proxy, e.Target, e.Err)
}
func (e *ProxyError) Unwrap() error        { return e.Err }
func (e *ProxyError) Is(target error) bool { return target == ErrProxy }

// Retryable: proxy authentication (407) and policy refusals (other 4xx)
// need a config change; network problems and 5xx (the proxy could not
// reach the service) may pass.
func (e *ProxyError) Retryable() bool {
	switch {
	case e.StatusCode == 0, e.StatusCode >= 500, e.StatusCode == 408, e.StatusCode == 429:
		return true
	}
	return false
}

// WebSocketError: the WebSocket upgrade to /$iothub/websocket failed.
type WebSocketError struct {
	URL        string
	StatusCode int // HTTP status of the failed upgrade, 0 if none
	Err        error
}

func (e *WebSocketError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("websocket %s: upgrade refused with HTTP %d: %v", e.URL, e.StatusCode, e.Err)
	}
	return fmt.Sprintf("websocket %s: %v", e.URL, e.Err)
}
func (e *WebSocketError) Unwrap() error        { return e.Err }
func (e *WebSocketError) Is(target error) bool { return target == ErrWebSocket }
func (e *WebSocketError) Retryable() bool {
	return e.StatusCode == 0 || e.StatusCode >= 500 || e.StatusCode == 429
}

// TLSErrorKind says what the TLS handshake tripped on.
type TLSErrorKind int

const (
	// TLSHandshake is any other handshake failure (reset, EOF, protocol).
	TLSHandshake TLSErrorKind = iota
	// TLSExpired: a server certificate is past its NotAfter by our clock.
	TLSExpired
	// TLSNotYetValid: a server certificate is before its NotBefore by our
	// clock, usually a device clock still at 1970.
	TLSNotYetValid
	// TLSUnknownAuthority: the server chain does not lead to the trust
	// bundle (wrong bundle, or TLS interception).
	TLSUnknownAuthority
	// TLSHostname: the server certificate does not name the host.
	TLSHostname
	// TLSClientCertRejected: the server refused our client certificate
	// (TLS alert bad_certificate, unknown_ca, certificate_expired, ...).
	TLSClientCertRejected
)

var tlsKindNames = [...]string{"handshake failed", "server certificate expired", "server certificate not yet valid",
	"server certificate signed by unknown authority", "server certificate hostname mismatch", "client certificate rejected"}

func (k TLSErrorKind) String() string {
	if int(k) < len(tlsKindNames) {
		return tlsKindNames[k]
	}
	return fmt.Sprintf("TLSErrorKind(%d)", int(k))
}

// TLSError: the TLS handshake with Host failed.
type TLSError struct {
	Kind TLSErrorKind
	Host string
	// Issuer of the top of the chain the server sent, for
	// TLSUnknownAuthority.
	Issuer string
	// Interception is set when the server chain was issued by a CA that
	// is not in the bundle while naming the right host: the classic sign
	// of a TLS-inspecting proxy (Zscaler, corporate firewalls).
	Interception bool
	Err          error
}

func (e *TLSError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tls %s: %s", e.Host, e.Kind)
	if e.Issuer != "" {
		fmt.Fprintf(&b, " (chain issued by %q)", e.Issuer)
	}
	if e.Interception {
		b.WriteString("; likely TLS interception by a proxy or firewall: allow-list the host for TLS pass-through, or add its CA to the trust bundle only if you trust it")
	}
	if e.Kind == TLSNotYetValid {
		b.WriteString("; check the device clock")
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}
func (e *TLSError) Unwrap() error { return e.Err }
func (e *TLSError) Is(target error) bool {
	return target == ErrTLS || (target == ErrNotAuthorized && e.Kind == TLSClientCertRejected)
}

// Retryable: clock problems and broken handshakes may pass (the clock
// syncs, the network heals); an untrusted chain, a wrong name or a
// rejected client certificate will not.
func (e *TLSError) Retryable() bool {
	switch e.Kind {
	case TLSHandshake, TLSExpired, TLSNotYetValid:
		return true
	}
	return false
}

// ConnackError: the server answered CONNECT with a refusal. Azure IoT
// Hub always uses 5 when it refuses a device.
type ConnackError struct {
	Host string
	Code byte
}

var connackText = map[byte]string{1: "unacceptable protocol version", 2: "identifier rejected",
	3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}

func (e *ConnackError) Error() string {
	t := connackText[e.Code]
	if t == "" {
		t = "unknown code"
	}
	return fmt.Sprintf("mqtt connect %s: CONNACK %d (%s)", e.Host, e.Code, t)
}
func (e *ConnackError) Is(target error) bool {
	return target == ErrConnack || (target == ErrNotAuthorized && (e.Code == 4 || e.Code == 5))
}

// Retryable: only "server unavailable" is transient by definition.
func (e *ConnackError) Retryable() bool { return e.Code == 3 }

// ClosedError: the server closed the connection at a point where it
// owed us an answer (during CONNECT, or with requests outstanding). Over
// MQTT, IoT Hub reports most errors this way.
type ClosedError struct {
	Host  string
	Phase string // "connect", "subscribe", "session"
	Err   error
}

func (e *ClosedError) Error() string {
	return fmt.Sprintf("mqtt %s %s: connection closed: %v", e.Phase, e.Host, e.Err)
}
func (e *ClosedError) Unwrap() error        { return e.Err }
func (e *ClosedError) Is(target error) bool { return target == ErrClosed }
func (e *ClosedError) Retryable() bool      { return true }

// StatusError: DPS (or the hub's twin channel) answered with a non-2xx
// status. The fields come from the error body
// (ProvisioningServiceErrorDetails); missing fields stay zero.
type StatusError struct {
	Op           string // "register", "poll", "twin get", ...
	Status       int    // status from the response topic
	ErrorCode    int    // extended code, e.g. 401002
	TrackingID   string
	Message      string
	TimestampUTC string
	Info         map[string]string
	RetryAfter   time.Duration // from the topic; 0 if absent
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: status %d", e.Op, e.Status)
	if e.ErrorCode != 0 {
		fmt.Fprintf(&b, ", errorCode %d", e.ErrorCode)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " (trackingId %s)", e.TrackingID)
	}
	return b.String()
}
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrStatus:
		return true
	case ErrThrottled:
		return e.Status == 429
	case ErrNotAuthorized:
		return e.Status == 401 || e.Status == 403
	}
	return false
}

// Retryable: 429 and 5xx, as every Microsoft SDK does.
func (e *StatusError) Retryable() bool { return e.Status == 429 || e.Status >= 500 }

// RequestActiveError: the hub refused a certificate request with 409 /
// 409005 because an earlier one (RequestID, perhaps sent before a reboot)
// is active until Expires. Wait until Expires before asking again, or
// ask with CertificateRequestOptions.Replace. Retryable, after Expires.
type RequestActiveError struct {
	Status    *StatusError
	RequestID string    // $rid of the active request (info.requestId)
	Expires   time.Time // info.operationExpires; zero if absent or unreadable
}

func (e *RequestActiveError) Error() string {
	s := e.Status.Error() + "; request " + e.RequestID + " is active"
	if !e.Expires.IsZero() {
		s += " until " + e.Expires.UTC().Format(time.RFC3339)
	}
	return s
}
func (e *RequestActiveError) Unwrap() error        { return e.Status }
func (e *RequestActiveError) Is(target error) bool { return target == ErrRequestActive }
func (e *RequestActiveError) Retryable() bool      { return true }

// requestActive turns a 409005 into a *RequestActiveError; other errors
// are returned as they are.
func requestActive(e *StatusError) error {
	if e.Status != 409 || e.ErrorCode != 409005 {
		return e
	}
	ra := &RequestActiveError{Status: e, RequestID: e.Info["requestId"]}
	if t, err := time.Parse(time.RFC3339Nano, e.Info["operationExpires"]); err == nil {
		ra.Expires = t
	}
	return ra
}

// RegistrationError: DPS finished the operation with status "failed" or
// "disabled". It is terminal: retrying sends the same registration.
type RegistrationError struct {
	RegistrationID string
	OperationID    string
	Status         string // "failed", "disabled" (or legacy "blacklisted")
	ErrorCode      int
	ErrorMessage   string
	State          *RegistrationState
}

func (e *RegistrationError) Error() string {
	s := fmt.Sprintf("registration %s %s", e.RegistrationID, e.Status)
	if e.ErrorCode != 0 {
		s += fmt.Sprintf(", errorCode %d", e.ErrorCode)
	}
	if e.ErrorMessage != "" {
		s += ": " + e.ErrorMessage
	}
	return s
}
func (e *RegistrationError) Is(target error) bool {
	if e.Status == StatusDisabled {
		return target == ErrDisabled
	}
	return target == ErrFailed
}
func (e *RegistrationError) Retryable() bool { return false }

// TimeoutError: an operation ran out of time. Last is the most recent
// underlying error, if any, so the caller sees why it never finished.
type TimeoutError struct {
	Op string
	// Attempts counts connection attempts and requests sent.
	Attempts int
	Last     error
	Err      error // context.DeadlineExceeded or ErrNoResponse
}

func (e *TimeoutError) Error() string {
	s := fmt.Sprintf("%s: timed out", e.Op)
	if e.Attempts > 0 {
		s += fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	if e.Last != nil {
		s += "; last error: " + e.Last.Error()
	}
	return s
}
func (e *TimeoutError) Unwrap() []error {
	errs := []error{e.Err}
	if e.Last != nil {
		errs = append(errs, e.Last)
	}
	return errs
}
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }
func (e *TimeoutError) Retryable() bool      { return true }

// ProtocolError: the service sent something we cannot parse. The raw
// input is kept (shortened) so it can be reported.
type ProtocolError struct {
	What string
	Raw  string
	Err  error
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("protocol: %s %q: %v", e.What, shorten(e.Raw, 200), e.Err)
}
func (e *ProtocolError) Unwrap() error        { return e.Err }
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }
func (e *ProtocolError) Retryable() bool      { return true }

// ConfigError: the caller's configuration is unusable.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string        { return fmt.Sprintf("config %s: %v", e.Field, e.Err) }
func (e *ConfigError) Unwrap() error        { return e.Err }
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }
func (e *ConfigError) Retryable() bool      { return false }

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
