package simulator

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DPSAPIVersions are the DPS device api-versions the simulator accepts
// (docs/simulator.md). The 2026-11-xx versions are drafts; they are accepted
// only with --accept-draft-api-versions.
var DPSAPIVersions = []string{"2019-03-31", "2021-06-01", "2021-10-01", "2025-07-01-preview"}

// DPSDraftAPIVersions are seen only in spec drafts, not confirmed as live.
var DPSDraftAPIVersions = []string{"2026-11-01", "2026-11-02-preview", "2026-11-15-preview"}

// HubAPIVersions are the hub api-versions the simulator accepts.
var HubAPIVersions = []string{"2019-10-01", "2020-09-30", "2021-04-12", "2025-08-01-preview"}

// DPSUsername is the parsed DPS CONNECT username
// `{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion={ua}]`.
type DPSUsername struct {
	IDScope        string
	RegistrationID string
	APIVersion     string
	ClientVersion  string
}

// ParseDPSUsername parses a DPS username. Extra `&key=value` parameters
// after api-version are tolerated; only ClientVersion is kept.
func ParseDPSUsername(s string) (DPSUsername, error) {
	var u DPSUsername
	parts := strings.SplitN(s, "/", 4)
	if len(parts) != 4 {
		return u, errors.New("username is not {idScope}/registrations/{registrationId}/api-version=...")
	}
	if parts[1] != "registrations" {
		return u, fmt.Errorf("username: second segment %q is not \"registrations\"", parts[1])
	}
	u.IDScope, u.RegistrationID = parts[0], parts[2]
	if u.IDScope == "" || u.RegistrationID == "" {
		return u, errors.New("username: empty id scope or registration id")
	}
	q := parts[3]
	if strings.HasPrefix(q, "?") {
		return u, errors.New("username: DPS takes no '?' before api-version")
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return u, fmt.Errorf("username: parameters: %w", err)
	}
	u.APIVersion = vals.Get("api-version")
	if u.APIVersion == "" {
		return u, errors.New("username: api-version missing")
	}
	u.ClientVersion = vals.Get("ClientVersion")
	return u, nil
}

// HubUsername is the parsed hub CONNECT username
// `{hubHost}/{deviceId}/?api-version={v}[&DeviceClientType=..][&model-id=..]`.
type HubUsername struct {
	HubHost          string
	DeviceID         string
	ModuleID         string
	APIVersion       string
	DeviceClientType string
	ModelID          string
}

// ParseHubUsername parses a hub username (device or module form).
func ParseHubUsername(s string) (HubUsername, error) {
	var u HubUsername
	i := strings.Index(s, "/?")
	if i < 0 {
		return u, errors.New("username is not {hubHost}/{deviceId}/?api-version=...")
	}
	path, query := s[:i], s[i+2:]
	segs := strings.Split(path, "/")
	switch len(segs) {
	case 2:
		u.HubHost, u.DeviceID = segs[0], segs[1]
	case 3:
		u.HubHost, u.DeviceID, u.ModuleID = segs[0], segs[1], segs[2]
	default:
		return u, errors.New("username: expected {hubHost}/{deviceId}/ before '?'")
	}
	if u.HubHost == "" || u.DeviceID == "" {
		return u, errors.New("username: empty hub host or device id")
	}
	vals, err := url.ParseQuery(query)
	if err != nil {
		return u, fmt.Errorf("username: parameters: %w", err)
	}
	u.APIVersion = vals.Get("api-version")
	if u.APIVersion == "" {
		return u, errors.New("username: api-version missing")
	}
	u.DeviceClientType = vals.Get("DeviceClientType")
	u.ModelID = vals.Get("model-id")
	return u, nil
}

// Property is one name/value of a property bag. Null marks `key` with no
// `=` (a null value), distinct from `key=` (empty string).
type Property struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Null  bool   `json:"null,omitempty"`
}

// ParsePropertyBag decodes `a=b&%24.ct=application%2Fjson&flag`; names and
// values are percent-decoded (no '+'-as-space: SDKs percent-encode spaces).
func ParsePropertyBag(s string) ([]Property, error) {
	if s == "" {
		return nil, nil
	}
	var out []Property
	for _, kv := range strings.Split(s, "&") {
		if kv == "" {
			continue
		}
		k, v, hasEq := strings.Cut(kv, "=")
		name, err := url.PathUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("property name %q: %w", k, err)
		}
		if name == "" {
			return nil, fmt.Errorf("property %q has an empty name", kv)
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("property %q value: %w", name, err)
		}
		out = append(out, Property{Name: name, Value: val, Null: !hasEq})
	}
	return out, nil
}

// EncodePropertyBag is the inverse of ParsePropertyBag.
func EncodePropertyBag(props []Property) string {
	var b strings.Builder
	for i, p := range props {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(escapeProp(p.Name))
		if !p.Null {
			b.WriteByte('=')
			b.WriteString(escapeProp(p.Value))
		}
	}
	return b.String()
}

func escapeProp(s string) string {
	// QueryEscape turns spaces into '+'; the hub uses %20.
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

// systemPropertyNames maps property-bag system names to the names used in
// recorded telemetry (and the service SDKs).
var systemPropertyNames = map[string]string{
	"$.mid":     "messageId",
	"$.cid":     "correlationId",
	"$.uid":     "userId",
	"$.ct":      "contentType",
	"$.ce":      "contentEncoding",
	"$.ctime":   "creationTimeUtc",
	"$.exp":     "expiryTimeUtc",
	"$.on":      "outputName",
	"$.ifid":    "interfaceId",
	"$.sub":     "componentName",
	"$.diagid":  "diagnosticId",
	"$.diagctx": "diagnosticContext",
	"$.to":      "to",
	"$.schema":  "schema",
	"$.dt":      "dataSchema",
}

// SplitProperties separates system from application properties.
func SplitProperties(props []Property) (system, app map[string]string) {
	system, app = map[string]string{}, map[string]string{}
	for _, p := range props {
		if strings.HasPrefix(p.Name, "$.") {
			n, ok := systemPropertyNames[p.Name]
			if !ok {
				n = p.Name
			}
			system[n] = p.Value
			continue
		}
		app[p.Name] = p.Value
	}
	return system, app
}

// TopicKind classifies a device publish topic.
type TopicKind int

// Topic kinds.
const (
	TopicUnknown TopicKind = iota
	TopicDPSRegister
	TopicDPSPoll
	TopicTelemetry
	TopicTwinGet
	TopicTwinPatchReported
	TopicMethodResponse
	TopicCredentials
)

// Topic is a parsed device publish topic.
type Topic struct {
	Kind        TopicKind
	RID         string
	OperationID string
	DeviceID    string
	ModuleID    string
	PropBag     string // raw, for telemetry
	Status      int    // method response status
	Query       url.Values
}

// ParseDPSTopic parses a DPS device publish topic.
func ParseDPSTopic(topic string) (Topic, error) {
	const reg = "$dps/registrations/PUT/iotdps-register/?"
	const poll = "$dps/registrations/GET/iotdps-get-operationstatus/?"
	var t Topic
	var q string
	switch {
	case strings.HasPrefix(topic, reg):
		t.Kind, q = TopicDPSRegister, topic[len(reg):]
	case strings.HasPrefix(topic, poll):
		t.Kind, q = TopicDPSPoll, topic[len(poll):]
	default:
		return t, fmt.Errorf("topic %q is not a DPS request topic", topic)
	}
	vals, err := parseQueryLoose(q)
	if err != nil {
		return Topic{}, fmt.Errorf("topic %q: %w", topic, err)
	}
	t.Query = vals
	t.RID = rawParam(q, "$rid")
	if _, ok := vals["$rid"]; !ok {
		return Topic{}, fmt.Errorf("topic %q has no $rid", topic)
	}
	if t.Kind == TopicDPSPoll {
		t.OperationID = vals.Get("operationId")
		if t.OperationID == "" {
			return Topic{}, fmt.Errorf("topic %q has no operationId", topic)
		}
	}
	return t, nil
}

// parseQueryLoose parses `a=b&c=d` keeping '+' literal and tolerating keys
// without values.
func parseQueryLoose(q string) (url.Values, error) {
	vals := url.Values{}
	for _, kv := range strings.Split(q, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		ku, err := url.PathUnescape(k)
		if err != nil {
			return nil, err
		}
		vu, err := url.PathUnescape(v)
		if err != nil {
			return nil, err
		}
		vals.Add(ku, vu)
	}
	return vals, nil
}

// ParseHubTopic parses a hub device publish topic for deviceID.
func ParseHubTopic(topic, deviceID string) (Topic, error) {
	var t Topic
	events := "devices/" + deviceID + "/messages/events/"
	switch {
	case strings.HasPrefix(topic, events):
		t.Kind, t.DeviceID, t.PropBag = TopicTelemetry, deviceID, topic[len(events):]
		t.PropBag = strings.TrimPrefix(t.PropBag, "?")
		return t, nil
	case topic == "devices/"+deviceID+"/messages/events":
		t.Kind, t.DeviceID = TopicTelemetry, deviceID
		return t, nil
	case strings.HasPrefix(topic, "$iothub/twin/GET/?"):
		t.Kind = TopicTwinGet
		return withRID(t, topic, topic[len("$iothub/twin/GET/?"):])
	case strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/reported/?"):
		t.Kind = TopicTwinPatchReported
		return withRID(t, topic, topic[len("$iothub/twin/PATCH/properties/reported/?"):])
	case strings.HasPrefix(topic, "$iothub/methods/res/"):
		rest := topic[len("$iothub/methods/res/"):]
		st, q, ok := strings.Cut(rest, "/?")
		if !ok {
			return Topic{}, fmt.Errorf("topic %q: method response without /?$rid=", topic)
		}
		var n int
		if _, err := fmt.Sscanf(st, "%d", &n); err != nil || fmt.Sprint(n) != st {
			return Topic{}, fmt.Errorf("topic %q: status %q is not an integer", topic, st)
		}
		t.Kind, t.Status = TopicMethodResponse, n
		return withRID(t, topic, q)
	case strings.HasPrefix(topic, "$iothub/credentials/POST/issueCertificate/?"):
		t.Kind = TopicCredentials
		return withRID(t, topic, topic[len("$iothub/credentials/POST/issueCertificate/?"):])
	case strings.HasPrefix(topic, "$iothub/credential/POST/issueCertificate/?"):
		// Singular spelling of the docs (the SDKs use the plural); ModuleID marks it.
		t.Kind, t.ModuleID = TopicCredentials, "credential"
		return withRID(t, topic, topic[len("$iothub/credential/POST/issueCertificate/?"):])
	}
	return Topic{}, fmt.Errorf("topic %q is not a topic IoT Hub accepts from device %q", topic, deviceID)
}

func withRID(t Topic, topic, q string) (Topic, error) {
	vals, err := parseQueryLoose(q)
	if err != nil {
		return Topic{}, fmt.Errorf("topic %q: %w", topic, err)
	}
	if _, ok := vals["$rid"]; !ok {
		return Topic{}, fmt.Errorf("topic %q has no $rid", topic)
	}
	t.Query, t.RID = vals, rawParam(q, "$rid")
	return t, nil
}

// rawParam returns key's value exactly as sent (the services echo $rid
// verbatim, without decoding it).
func rawParam(q, key string) string {
	for _, kv := range strings.Split(q, "&") {
		if k, v, _ := strings.Cut(kv, "="); k == key || k == strings.Replace(key, "$", "%24", 1) {
			return v
		}
	}
	return ""
}

// HubSubscriptionAllowed reports whether IoT Hub accepts filter from
// deviceID (docs/simulator.md, "IoT Hub device endpoint").
func HubSubscriptionAllowed(filter, deviceID string) bool {
	switch filter {
	case "devices/" + deviceID + "/messages/devicebound/#",
		"devices/+/messages/devicebound/#",
		"$iothub/twin/res/#",
		"$iothub/twin/PATCH/properties/desired/#",
		"$iothub/methods/POST/#",
		"$iothub/credentials/res/#",
		"$iothub/credential/#", "$iothub/credential/res/#":
		return true
	}
	return false
}

// ValidRegistrationID checks DPS's registration ID rules: 1..128
// ASCII letters, digits, - . _ : with the last character a letter, digit
// or '-'.
func ValidRegistrationID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("registration id %q must be 1..128 characters", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-._:", c)) {
			return fmt.Errorf("registration id %q: character %q is not allowed", id, c)
		}
	}
	if l := id[len(id)-1]; l == '.' || l == '_' || l == ':' {
		return fmt.Errorf("registration id %q must end with a letter, digit or '-'", id)
	}
	return nil
}

// ValidDeviceID checks IoT Hub's device ID rules: 1..128 ASCII
// letters, digits and - . % _ * ? ! ( ) , : = @ $ '.
func ValidDeviceID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("device id %q must be 1..128 characters", id)
	}
	for _, c := range id {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-.%_*?!(),:=@$'", c) {
			continue
		}
		return fmt.Errorf("device id %q: character %q is not allowed", id, c)
	}
	return nil
}

func decodeB64(s string) ([]byte, error) {
	s = strings.Join(strings.Fields(s), "")
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}
