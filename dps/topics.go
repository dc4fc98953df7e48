package dps

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Wire strings, exactly as docs/dps.md lists them.
const (
	dpsAPIVersion    = "2019-03-31"
	dpsCSRAPIVersion = "2025-07-01-preview"
	hubAPIVersion    = "2021-04-12"

	dpsResSubscribe = "$dps/registrations/res/#"
	dpsResPrefix    = "$dps/registrations/res/"
	dpsRegisterFmt  = "$dps/registrations/PUT/iotdps-register/?$rid=%s"
	dpsPollFmt      = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=%s&operationId=%s"

	twinResSubscribe     = "$iothub/twin/res/#"
	twinResPrefix        = "$iothub/twin/res/"
	twinDesiredSubscribe = "$iothub/twin/PATCH/properties/desired/#"
	twinDesiredPrefix    = "$iothub/twin/PATCH/properties/desired/"
	twinGetFmt           = "$iothub/twin/GET/?$rid=%s"
	twinPatchFmt         = "$iothub/twin/PATCH/properties/reported/?$rid=%s"
	methodsSubscribe     = "$iothub/methods/POST/#"
	methodsPrefix        = "$iothub/methods/POST/"
	methodResFmt         = "$iothub/methods/res/%d/?$rid=%s"
)

// DPSUsername is the CONNECT user name for DPS. Note: no "?" before
// api-version (unlike IoT Hub).
func DPSUsername(idScope, registrationID, apiVersion, clientVersion string) string {
	u := idScope + "/registrations/" + registrationID + "/api-version=" + apiVersion
	if clientVersion != "" {
		u += "&ClientVersion=" + EscapeProperty(clientVersion)
	}
	return u
}

// HubUsername is the CONNECT user name for IoT Hub.
func HubUsername(hubHost, deviceID, apiVersion, modelID string) string {
	u := hubHost + "/" + deviceID + "/?api-version=" + apiVersion
	if modelID != "" {
		u += "&model-id=" + EscapeProperty(modelID)
	}
	return u
}

func dpsRegisterTopic(rid string) string { return fmt.Sprintf(dpsRegisterFmt, rid) }
func dpsPollTopic(rid, operationID string) string {
	// Verbatim, like every SDK: the operationId is opaque.
	return fmt.Sprintf(dpsPollFmt, rid, operationID)
}
func c2dSubscribe(deviceID string) string { return "devices/" + deviceID + "/messages/devicebound/#" }
func c2dPrefix(deviceID string) string    { return "devices/" + deviceID + "/messages/devicebound/" }

// TelemetryTopic is devices/{id}/messages/events/{property_bag}.
func TelemetryTopic(deviceID string, m *Message) string {
	return "devices/" + deviceID + "/messages/events/" + m.propertyBag()
}

// Response is a parsed "res" topic: $dps/registrations/res/{status}/?{query}
// or $iothub/twin/res/{status}/?{query}.
type Response struct {
	Status     int
	RID        string
	RetryAfter time.Duration // 0 when absent
	HasRetry   bool
	Version    int64 // $version on twin responses; 0 when absent
	HasVersion bool
}

var errNotResponse = errors.New("not a response topic")

// ParseDPSResponseTopic parses $dps/registrations/res/{status}/?$rid=..&retry-after=..
func ParseDPSResponseTopic(topic string) (Response, error) {
	return parseResponseTopic(topic, dpsResPrefix)
}

// ParseTwinResponseTopic parses $iothub/twin/res/{status}/?$rid=..&$version=..
func ParseTwinResponseTopic(topic string) (Response, error) {
	return parseResponseTopic(topic, twinResPrefix)
}

// parseResponseTopic accepts what every SDK accepts: status digits up
// to the next "/", then an optional "?" query whose keys are compared
// case-insensitively and may be percent-encoded ("%24rid").
func parseResponseTopic(topic, prefix string) (Response, error) {
	var r Response
	if !strings.HasPrefix(topic, prefix) {
		return r, &ProtocolError{What: "response topic", Raw: topic, Err: errNotResponse}
	}
	rest := topic[len(prefix):]
	statusStr, query, _ := strings.Cut(rest, "/")
	st, err := strconv.Atoi(statusStr)
	if err != nil || st < 100 || st > 999 || statusStr[0] == '+' || statusStr[0] == '-' {
		return r, &ProtocolError{What: "response status", Raw: topic, Err: fmt.Errorf("status %q is not a 3-digit integer", statusStr)}
	}
	r.Status = st
	query = strings.TrimPrefix(query, "?")
	for _, p := range ParsePropertyBag(query) {
		switch strings.ToLower(p.Name) {
		case "$rid":
			r.RID = p.Value
		case "retry-after":
			n, err := strconv.ParseInt(strings.TrimSpace(p.Value), 10, 64)
			if err == nil && n >= 0 {
				if n > 1<<31 {
					n = 1 << 31
				}
				r.RetryAfter = time.Duration(n) * time.Second
				r.HasRetry = true
			}
		case "$version":
			n, err := strconv.ParseInt(p.Value, 10, 64)
			if err == nil {
				r.Version, r.HasVersion = n, true
			}
		}
	}
	return r, nil
}

// MethodRequestTopic is a parsed $iothub/methods/POST/{name}/?$rid={rid}.
type methodTopic struct {
	Name string
	RID  string
}

func parseMethodTopic(topic string) (methodTopic, error) {
	var m methodTopic
	if !strings.HasPrefix(topic, methodsPrefix) {
		return m, &ProtocolError{What: "method topic", Raw: topic, Err: errors.New("unexpected prefix")}
	}
	rest := topic[len(methodsPrefix):]
	i := strings.LastIndex(rest, "/?")
	if i < 0 {
		// Tolerate a missing query, but a method without $rid cannot be
		// answered.
		return m, &ProtocolError{What: "method topic", Raw: topic, Err: errors.New("no $rid")}
	}
	m.Name = unescapeLenient(rest[:i])
	for _, p := range ParsePropertyBag(rest[i+2:]) {
		if strings.EqualFold(p.Name, "$rid") {
			m.RID = p.Value
		}
	}
	if m.Name == "" || m.RID == "" {
		return m, &ProtocolError{What: "method topic", Raw: topic, Err: errors.New("empty method name or $rid")}
	}
	return m, nil
}

// parseDesiredTopic returns the $version of a desired-properties patch
// topic, $iothub/twin/PATCH/properties/desired/?$version={n}.
func parseDesiredTopic(topic string) (int64, bool, error) {
	if !strings.HasPrefix(topic, twinDesiredPrefix) {
		return 0, false, &ProtocolError{What: "desired topic", Raw: topic, Err: errors.New("unexpected prefix")}
	}
	q := strings.TrimPrefix(topic[len(twinDesiredPrefix):], "?")
	for _, p := range ParsePropertyBag(q) {
		if strings.EqualFold(p.Name, "$version") {
			n, err := strconv.ParseInt(p.Value, 10, 64)
			if err != nil {
				return 0, false, &ProtocolError{What: "desired $version", Raw: topic, Err: err}
			}
			return n, true, nil
		}
	}
	return 0, false, nil
}

// Property is one name=value pair of an MQTT property bag. Null is set
// for a bare "name" (no "="), which IoT Hub uses for a null value; it is
// distinct from "name=" (empty string).
type Property struct {
	Name  string
	Value string
	Null  bool
}

// PropertyBag is an ordered list of properties as they appear in a
// topic.
type PropertyBag []Property

// Get returns the value of the first property called name.
func (b PropertyBag) Get(name string) (string, bool) {
	for _, p := range b {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// ParsePropertyBag decodes "a=1&%24.mid=x&flag". Names and values are
// percent-decoded; an invalid escape is kept literally rather than
// dropping the property, so nothing the service sent is lost. "+" is a
// literal plus (the bag is RFC 3986, not form encoding).
func ParsePropertyBag(s string) PropertyBag {
	if s == "" {
		return nil
	}
	var bag PropertyBag
	for _, part := range strings.Split(s, "&") {
		if part == "" {
			continue
		}
		name, value, hasEq := strings.Cut(part, "=")
		bag = append(bag, Property{Name: unescapeLenient(name), Value: unescapeLenient(value), Null: !hasEq})
	}
	return bag
}

// EncodePropertyBag encodes properties in order: every byte outside the
// RFC 3986 unreserved set is percent-encoded (so "$" becomes "%24", a
// space "%20", "/" "%2F"), as azure-sdk-for-c and the Python SDK do.
func EncodePropertyBag(bag PropertyBag) string {
	var b strings.Builder
	for i, p := range bag {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(EscapeProperty(p.Name))
		if !p.Null {
			b.WriteByte('=')
			b.WriteString(EscapeProperty(p.Value))
		}
	}
	return b.String()
}

// EscapeProperty percent-encodes s for a property bag or query value.
func EscapeProperty(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	out := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			out = append(out, c)
		} else {
			out = append(out, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(out)
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unescapeLenient(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			h, ok1 := unhex(s[i+1])
			l, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				out = append(out, h<<4|l)
				i += 2
				continue
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

// System property names on the wire (the "$." prefix, sent as "%24.").
const (
	propMessageID       = "$.mid"
	propCorrelationID   = "$.cid"
	propUserID          = "$.uid"
	propContentType     = "$.ct"
	propContentEncoding = "$.ce"
	propCreationTime    = "$.ctime"
	propExpiry          = "$.exp"
	propTo              = "$.to"
	propComponent       = "$.sub"
	propAck             = "iothub-ack"
)

// Message is a device-to-cloud telemetry message.
type Message struct {
	Payload         []byte
	MessageID       string // $.mid
	CorrelationID   string // $.cid
	UserID          string // $.uid
	ContentType     string // $.ct, e.g. "application/json"
	ContentEncoding string // $.ce, e.g. "utf-8"
	CreationTime    time.Time
	Component       string // $.sub (Plug and Play)
	// Properties are application properties. They are encoded sorted by
	// name so the topic is deterministic.
	Properties map[string]string
}

func (m *Message) propertyBag() string {
	bag := make(PropertyBag, 0, 7+len(m.Properties)) // system properties + user properties
	add := func(name, v string) {
		if v != "" {
			bag = append(bag, Property{Name: name, Value: v})
		}
	}
	add(propMessageID, m.MessageID)
	add(propCorrelationID, m.CorrelationID)
	add(propUserID, m.UserID)
	add(propContentType, m.ContentType)
	add(propContentEncoding, m.ContentEncoding)
	if !m.CreationTime.IsZero() {
		add(propCreationTime, m.CreationTime.UTC().Format(time.RFC3339Nano))
	}
	add(propComponent, m.Component)
	names := make([]string, 0, len(m.Properties))
	for k := range m.Properties {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		bag = append(bag, Property{Name: k, Value: m.Properties[k]})
	}
	return EncodePropertyBag(bag)
}

// C2DMessage is a cloud-to-device message with its decoded property
// bag. System properties are split out; everything else is in
// Properties.
type C2DMessage struct {
	Topic           string
	Payload         []byte
	MessageID       string // $.mid
	To              string // $.to
	CorrelationID   string // $.cid
	UserID          string // $.uid
	ContentType     string // $.ct
	ContentEncoding string // $.ce
	Expiry          string // $.exp, as sent
	Ack             string // iothub-ack: none|positive|negative|full
	Properties      PropertyBag
}

// ParseC2DTopic decodes devices/{id}/messages/devicebound/{bag}. System
// property names are matched in both "$." and "%24." forms (decoding
// makes them equal).
func ParseC2DTopic(deviceID, topic string) (*C2DMessage, error) {
	prefix := c2dPrefix(deviceID)
	if !strings.HasPrefix(topic, prefix) {
		// azure-sdk-for-c subscribes with devices/+/..., so accept any
		// device segment as long as the shape is right.
		parts := strings.SplitN(topic, "/", 5)
		if len(parts) < 4 || parts[0] != "devices" || parts[2] != "messages" || parts[3] != "devicebound" {
			return nil, &ProtocolError{What: "c2d topic", Raw: topic, Err: errors.New("not devices/{id}/messages/devicebound/")}
		}
		prefix = strings.Join(parts[:4], "/") + "/"
		if len(topic) < len(prefix) {
			prefix = topic
		}
	}
	m := &C2DMessage{Topic: topic}
	for _, p := range ParsePropertyBag(topic[len(prefix):]) {
		switch p.Name {
		case propMessageID:
			m.MessageID = p.Value
		case propTo:
			m.To = p.Value
		case propCorrelationID:
			m.CorrelationID = p.Value
		case propUserID:
			m.UserID = p.Value
		case propContentType:
			m.ContentType = p.Value
		case propContentEncoding:
			m.ContentEncoding = p.Value
		case propExpiry:
			m.Expiry = p.Value
		case propAck:
			m.Ack = p.Value
		default:
			m.Properties = append(m.Properties, p)
		}
	}
	return m, nil
}

// MaxWireID is the longest registration or device ID Azure accepts.
const MaxWireID = 128

// checkWireID keeps an ID that would corrupt the MQTT exchange off the
// wire: it goes into the client ID, the user name and topic names, so
// it must be 1..128 printable ASCII characters without / # + & or space.
// Which IDs a device may have is not dps's rule (the agent's is
// hal/board's); anything else Azure refuses comes back as a typed error.
func checkWireID(field, id string) error {
	if id == "" || len(id) > MaxWireID {
		return &ConfigError{Field: field, Err: fmt.Errorf("%q: want 1..%d characters, got %d", id, MaxWireID, len(id))}
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' || strings.IndexByte("/#+&", c) >= 0 {
			return &ConfigError{Field: field, Err: fmt.Errorf("%q: character %q at offset %d cannot go into an MQTT topic or user name", id, c, i)}
		}
	}
	return nil
}
