package simulator

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// HubConfig describes one simulated IoT hub. GET /sim/hubs returns it.
type HubConfig struct {
	Name   string `json:"name"`
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
	// AllocationWeight (1..1000) weights hashed allocation; default 1.
	AllocationWeight int `json:"allocationWeight"`
	// ApplyAllocationPolicy false removes the hub from allocation unless
	// an enrollment names it explicitly.
	ApplyAllocationPolicy bool `json:"applyAllocationPolicy"`
	// LatencyMs is the configured latency used by geoLatency allocation.
	LatencyMs int `json:"latencyMs"`
}

// Switches select the simulator's behaviour where the public Azure
// documentation, the SDKs and observed service behaviour disagree or say
// nothing. Defaults are the most likely real behaviour; the Switches table
// of docs/simulator.md lists each with its flag.
type Switches struct {
	// DPSIDMismatch: ClientId != username registration id, or leaf CN !=
	// registration id. "connack" (CONNACK 5) or "register" (401 on register).
	DPSIDMismatch string
	// DisabledEnrollment: "status" (operation ends with status "disabled")
	// or "401" (401002 on register).
	DisabledEnrollment string
	// DPSResponseQoS: "granted" = min(granted, 1); "0" = always QoS 0.
	DPSResponseQoS string
	// FailedTopicStatus: topic status of a completed-but-failed operation
	// (200, or e.g. 400 to report it as an error).
	FailedTopicStatus int
	// CSRCurves: accepted CSR key curves ("P-256,P-384"; the docs name
	// P-384, the SDK samples use P-256).
	CSRCurves string
	// HubRetain: retained telemetry: "property" (forward with application
	// property mqtt-retain, as the IoT Hub MQTT docs say) or "close" (drop
	// the connection).
	HubRetain string
	// HubUnknownTopic: "close" or "ignore" a publish to an undocumented topic.
	HubUnknownTopic string
	// DPSMaxTLS / HubMaxTLS: "1.2" (default, confirmed for DPS) or "1.3"
	// (a preview on hubs).
	DPSMaxTLS string
	HubMaxTLS string
	// RequireSNI: refuse TLS without SNI.
	RequireSNI bool
	// APIVersions: "strict" refuses api-versions other than DPSAPIVersions
	// and HubAPIVersions, "lenient" accepts any.
	APIVersions string
	// DraftAPIVersions accepts the 2026-11-xx draft DPS versions.
	DraftAPIVersions bool
	// CSROldAPI: "ignore" or "reject" (400) a csr sent with an api-version
	// before 2025-07-01-preview.
	CSROldAPI string
	// CSRWithoutPolicy: "ignore" (assigned without issuedCertificateChain)
	// or "reject" (400) a csr for an enrollment without a credential
	// policy (x-sim-credentialPolicy).
	CSRWithoutPolicy string
	// HubCredentialsTopic: spelling of the hub certificate-renewal topics
	// accepted: "credentials" (SDKs), "credential" (docs) or "both".
	HubCredentialsTopic string
	// HubCredentialsResponse: 200 body of the hub certificate renewal:
	// "array" (bare base64 DER array, SDK) or "object" ({"certificates":[PEM]}, docs).
	HubCredentialsResponse string
	// DPSErrorMessageField: name of the text field of DPS error bodies:
	// "message" (the service's TypeSpec), "errorMessage" (the field name
	// some client code expects; docs/simulator.md) or "both".
	DPSErrorMessageField string
	// ConnectionProfile, when set, is returned as
	// registrationState.connectionProfile to devices using the draft
	// api-versions 2026-11-02-preview / 2026-11-15-preview.
	ConnectionProfile string
	// RegistrationsPerMinute throttles register requests per service with
	// 429 (the documented quota is 1,000/min, older docs say 200; 0 = off
	// so load tests can exceed it).
	RegistrationsPerMinute int
	// EmptyRegisterBody: an empty or whitespace register body is "accept"ed
	// as {"registrationId": <the username's>} (what Microsoft's
	// azure-sdk-for-c provisioning sample sends) or "reject"ed with 400.
	EmptyRegisterBody string
}

// DefaultSwitches returns the defaults documented in docs/simulator.md.
func DefaultSwitches() Switches {
	return Switches{
		DPSIDMismatch:      "connack",
		DisabledEnrollment: "status",
		DPSResponseQoS:     "granted",
		FailedTopicStatus:  200,
		CSRCurves:          "P-256,P-384",
		HubRetain:          "property",
		HubUnknownTopic:    "close",
		DPSMaxTLS:          "1.2",
		HubMaxTLS:          "1.2",
		APIVersions:        "strict",
		CSROldAPI:          "ignore",
		CSRWithoutPolicy:   "ignore",
		// Both spellings: the simulator answers on the family the device used.
		HubCredentialsTopic:    "both",
		HubCredentialsResponse: "array",
		DPSErrorMessageField:   "message",
		EmptyRegisterBody:      "accept",
	}
}

// withDefaults fills every unset switch with its default.
func withDefaults(sw Switches) Switches {
	d := DefaultSwitches()
	for _, f := range []struct{ v, def *string }{
		{&sw.DPSIDMismatch, &d.DPSIDMismatch}, {&sw.DisabledEnrollment, &d.DisabledEnrollment},
		{&sw.DPSResponseQoS, &d.DPSResponseQoS}, {&sw.CSRCurves, &d.CSRCurves}, {&sw.HubRetain, &d.HubRetain},
		{&sw.HubUnknownTopic, &d.HubUnknownTopic}, {&sw.DPSMaxTLS, &d.DPSMaxTLS}, {&sw.HubMaxTLS, &d.HubMaxTLS},
		{&sw.APIVersions, &d.APIVersions}, {&sw.CSROldAPI, &d.CSROldAPI}, {&sw.CSRWithoutPolicy, &d.CSRWithoutPolicy},
		{&sw.HubCredentialsTopic, &d.HubCredentialsTopic}, {&sw.HubCredentialsResponse, &d.HubCredentialsResponse},
		{&sw.DPSErrorMessageField, &d.DPSErrorMessageField}, {&sw.EmptyRegisterBody, &d.EmptyRegisterBody},
	} {
		if *f.v == "" {
			*f.v = *f.def
		}
	}
	if sw.FailedTopicStatus == 0 {
		sw.FailedTopicStatus = d.FailedTopicStatus
	}
	return sw
}

// Config configures a simulator.
type Config struct {
	StateDir    string
	IDScope     string
	DPSHost     string
	DPSAddr     string
	DPSWSAddr   string
	Hubs        []HubConfig
	ControlAddr string
	// ControlToken, when set, is the bearer token every control-plane
	// call must carry; ControlTokenFile is the file it came from, named in
	// the ready line so that the control verbs and harnesses find it.
	ControlToken     string
	ControlTokenFile string
	ESTAddr          string
	// ServerKey is the TLS server key type: "rsa" (default, like Azure) or
	// "ecdsa" (cheaper handshakes for load tests).
	ServerKey string
	// RetryAfter is the retry-after DPS sends with 202 (seconds; the real
	// service sends 3); -1 sends none.
	RetryAfter int
	// AssigningPolls is how many polls answer 202 "assigning" before the
	// 200 result (the real service usually needs one).
	AssigningPolls int
	// PollLimit / PollWindow: DPS polling limit per device (5 per 10 s).
	PollLimit  int
	PollWindow time.Duration
	// TelemetryMax bounds recorded telemetry (oldest dropped).
	TelemetryMax int
	// IssuedValidity is the default lifetime of certificates issued for
	// the DPS csr field and EST.
	IssuedValidity time.Duration
	Switches       Switches
	Logger         *slog.Logger
	// ESTClientCAs are extra CAs whose certificates may enroll over EST
	// (e.g. the factory station CA of the jig).
	ESTClientCAs []*x509.Certificate
}

// normalize checks cfg and fills in every default.
func (cfg Config) normalize() (Config, error) {
	if cfg.StateDir == "" {
		return cfg, errors.New("state dir is required")
	}
	cfg.Switches = withDefaults(cfg.Switches)
	if cfg.IDScope == "" {
		cfg.IDScope = "0ne0000SIM1"
	}
	if cfg.DPSHost == "" {
		cfg.DPSHost = "localhost"
	}
	switch cfg.ServerKey {
	case "":
		cfg.ServerKey = "rsa"
	case "rsa", "ecdsa":
	default:
		return cfg, fmt.Errorf("server key type %q is not rsa or ecdsa", cfg.ServerKey)
	}
	if cfg.RetryAfter < -1 {
		return cfg, fmt.Errorf("retry-after %d: want seconds >= 0, or -1 to omit it", cfg.RetryAfter)
	}
	cfg.AssigningPolls = max(cfg.AssigningPolls, 0)
	defaultTo(&cfg.PollLimit, 5)
	defaultTo(&cfg.PollWindow, 10*time.Second)
	defaultTo(&cfg.TelemetryMax, 100000)
	defaultTo(&cfg.IssuedValidity, 30*24*time.Hour)
	if len(cfg.Hubs) == 0 {
		cfg.Hubs = []HubConfig{{Name: "sim-hub-1"}}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	for _, a := range []*string{&cfg.DPSAddr, &cfg.DPSWSAddr, &cfg.ControlAddr, &cfg.ESTAddr} {
		defaultTo(a, "127.0.0.1:0")
	}
	// A fresh slice: the caller's HubConfigs stay untouched.
	hubs := make([]HubConfig, len(cfg.Hubs))
	for i, h := range cfg.Hubs {
		defaultTo(&h.Host, h.Name+".azure-devices.net")
		defaultTo(&h.Addr, "127.0.0.1:0")
		defaultTo(&h.WSAddr, "127.0.0.1:0")
		defaultTo(&h.AllocationWeight, 1)
		hubs[i] = h
	}
	cfg.Hubs = hubs
	return cfg, nil
}

// serverNames are the names the TLS server certificate must cover.
func (cfg Config) serverNames() []string {
	names := []string{cfg.DPSHost, "localhost", "127.0.0.1", "::1"}
	for _, h := range cfg.Hubs {
		names = append(names, h.Host)
	}
	return names
}

// defaultTo sets *v to def when it holds the zero value.
func defaultTo[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
