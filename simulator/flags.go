package simulator

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"devid/simulator/simapi"
)

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// serveFlags are the values of `devid-sim serve` flags that need work
// before they fit a Config.
type serveFlags struct {
	hubs, state                         string
	verbose                             bool
	hubAddr, hubWS, hubHost, hubLatency multi
	estCAs                              multi
	tokenFile                           string
}

// ParseFlags parses the flags of `devid-sim serve` (listed in
// docs/simulator.md) into a Config whose logger writes text to logOut.
// The state directory is made absolute.
func ParseFlags(args []string, logOut io.Writer) (Config, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is returned; -h is flag.ErrHelp
	cfg := Config{}
	sf := bindServeFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if sf.state == "" {
		return cfg, errors.New("serve: --state DIR is required")
	}
	if err := checkSwitches(cfg.Switches); err != nil {
		return cfg, err
	}
	var err error
	if cfg.Hubs, err = sf.hubConfigs(); err != nil {
		return cfg, err
	}
	lvl := slog.LevelInfo
	if sf.verbose {
		lvl = slog.LevelDebug
	}
	if cfg.StateDir, err = filepath.Abs(sf.state); err != nil {
		return cfg, err
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: lvl}))
	if cfg.ESTClientCAs, err = readCAFiles(sf.estCAs); err != nil {
		return cfg, err
	}
	if sf.tokenFile != "" {
		if cfg.ControlTokenFile, err = filepath.Abs(sf.tokenFile); err != nil {
			return cfg, err
		}
		if cfg.ControlToken, err = simapi.ReadControlToken(cfg.ControlTokenFile); err != nil {
			return cfg, fmt.Errorf("serve: --control-token-file: %w", err)
		}
	}
	if cfg.RetryAfter < -1 || cfg.Switches.RegistrationsPerMinute < 0 || cfg.AssigningPolls < 0 || cfg.PollLimit < 0 || cfg.TelemetryMax < 1 || cfg.IssuedValidity <= 0 {
		return cfg, errors.New("serve: --retry-after must be >= -1, --assigning-polls and --poll-limit >= 0, --telemetry-max >= 1, --issued-validity > 0")
	}
	if cfg.PollLimit == 0 {
		cfg.PollLimit = -1 // unlimited (0 in a Config means the default)
	}
	return cfg, nil
}

// ServeFlags defines serve's flags on fs with their defaults, for help and
// the man page; ParseFlags is what parses them.
func ServeFlags(fs *flag.FlagSet) { bindServeFlags(fs, &Config{}) }

// bindServeFlags defines every serve flag on fs, storing into cfg or the
// returned serveFlags.
func bindServeFlags(fs *flag.FlagSet, cfg *Config) *serveFlags {
	sf := &serveFlags{}
	fs.StringVar(&sf.state, "state", "", "state `DIR` (created 0700); required")
	fs.StringVar(&cfg.IDScope, "id-scope", "0ne0000SIM1", "DPS ID scope")
	fs.StringVar(&cfg.DPSHost, "dps-host", "localhost", "DPS host name (TLS SNI / certificate name)")
	fs.StringVar(&cfg.DPSAddr, "dps-addr", "127.0.0.1:0", "DPS MQTT/TLS listen address")
	fs.StringVar(&cfg.DPSWSAddr, "dps-ws-addr", "127.0.0.1:0", "DPS MQTT over secure WebSocket listen address")
	fs.StringVar(&sf.hubs, "hubs", "sim-hub-1", "comma-separated hub names; host = NAME.azure-devices.net unless --hub-host")
	fs.StringVar(&cfg.ControlAddr, "control-addr", "127.0.0.1:0", "control plane HTTP listen address (loopback)")
	fs.StringVar(&sf.tokenFile, "control-token-file", "", "`FILE` holding a bearer token every control-plane call must carry (default: none; loopback only)")
	fs.StringVar(&cfg.ESTAddr, "est-addr", "127.0.0.1:0", "EST HTTPS listen address")
	fs.IntVar(&cfg.RetryAfter, "retry-after", 3, "retry-after seconds DPS sends with 202 (-1 = omit retry-after)")
	fs.IntVar(&cfg.AssigningPolls, "assigning-polls", 1, "polls answered 202 assigning before the 200 result")
	fs.IntVar(&cfg.PollLimit, "poll-limit", 5, "operation-status polls allowed per device per --poll-window (0 = unlimited)")
	fs.DurationVar(&cfg.PollWindow, "poll-window", 10*time.Second, "window of --poll-limit")
	fs.IntVar(&cfg.TelemetryMax, "telemetry-max", 100000, "telemetry records kept (oldest dropped)")
	fs.DurationVar(&cfg.IssuedValidity, "issued-validity", 30*24*time.Hour, "lifetime of certificates issued for a DPS csr / EST")
	fs.BoolVar(&sf.verbose, "v", false, "debug logging")
	fs.StringVar(&cfg.ServerKey, "server-key", "rsa", "TLS server key: rsa (like Azure) | ecdsa (P-256, cheaper handshakes for load)")
	bindSwitches(fs, &cfg.Switches)
	fs.Var(&sf.hubAddr, "hub-addr", "`NAME=ADDR` hub MQTT/TLS listen address (repeatable)")
	fs.Var(&sf.hubWS, "hub-ws-addr", "`NAME=ADDR` hub WebSocket listen address (repeatable)")
	fs.Var(&sf.hubHost, "hub-host", "`NAME=HOST` hub host name (repeatable)")
	fs.Var(&sf.hubLatency, "hub-latency", "`NAME=MS` configured latency for geoLatency allocation (repeatable)")
	fs.Var(&sf.estCAs, "est-client-ca", "PEM `FILE` of a CA whose certificates may enroll over EST (repeatable)")
	return sf
}

// bindSwitches defines the flag of every switch (docs/simulator.md,
// "Switches"), defaulting to DefaultSwitches.
func bindSwitches(fs *flag.FlagSet, sw *Switches) {
	d := DefaultSwitches()
	fs.StringVar(&sw.DPSIDMismatch, "dps-id-mismatch", d.DPSIDMismatch, "client id / username / CN mismatch on DPS: connack | register (401)")
	fs.StringVar(&sw.DisabledEnrollment, "disabled-enrollment", d.DisabledEnrollment, "disabled enrollment or registration: status (\"disabled\" result) | 401")
	fs.StringVar(&sw.DPSResponseQoS, "dps-response-qos", d.DPSResponseQoS, "DPS response QoS: granted (min(granted,1)) | 0")
	fs.IntVar(&sw.FailedTopicStatus, "failed-topic-status", d.FailedTopicStatus, "topic status of a completed-but-failed DPS operation")
	fs.StringVar(&sw.CSRCurves, "csr-curves", d.CSRCurves, "accepted CSR curves")
	fs.StringVar(&sw.HubRetain, "hub-retain", d.HubRetain, "retained hub publish: property (mqtt-retain) | close")
	fs.StringVar(&sw.HubUnknownTopic, "hub-unknown-topic", d.HubUnknownTopic, "publish to an undocumented hub topic: close | ignore")
	fs.StringVar(&sw.DPSMaxTLS, "dps-max-tls", d.DPSMaxTLS, "highest TLS version on DPS: 1.2 | 1.3")
	fs.StringVar(&sw.HubMaxTLS, "hub-max-tls", d.HubMaxTLS, "highest TLS version on hubs: 1.2 | 1.3")
	fs.BoolVar(&sw.RequireSNI, "require-sni", d.RequireSNI, "refuse TLS handshakes without SNI")
	fs.StringVar(&sw.APIVersions, "api-versions", d.APIVersions, "strict (only the documented api-versions) | lenient")
	fs.BoolVar(&sw.DraftAPIVersions, "accept-draft-api-versions", d.DraftAPIVersions, "accept the 2026-11-xx draft DPS api-versions")
	fs.StringVar(&sw.CSROldAPI, "csr-old-api", d.CSROldAPI, "csr with an api-version before 2025-07-01-preview: ignore | reject")
	fs.StringVar(&sw.CSRWithoutPolicy, "csr-without-policy", d.CSRWithoutPolicy, "csr for an enrollment without x-sim-credentialPolicy: ignore (assigned without a certificate) | reject (400)")
	fs.StringVar(&sw.HubCredentialsTopic, "hub-credentials-topic", d.HubCredentialsTopic, "hub certificate renewal topic spelling: both | credentials | credential")
	fs.StringVar(&sw.DPSErrorMessageField, "dps-error-message-field", d.DPSErrorMessageField, "text field of DPS error bodies: message | errorMessage | both")
	fs.StringVar(&sw.ConnectionProfile, "connection-profile", "", "registrationState.connectionProfile for draft api-version 2026-11-02-preview clients (e.g. classic, mqttV5); empty = omit")
	fs.IntVar(&sw.RegistrationsPerMinute, "registrations-per-minute", 0, "throttle register requests per service with 429 (documented quota 1000; 0 = off)")
	fs.StringVar(&sw.HubCredentialsResponse, "hub-credentials-response", d.HubCredentialsResponse, "hub certificate renewal 200 body: array | object")
	fs.StringVar(&sw.EmptyRegisterBody, "empty-register-body", d.EmptyRegisterBody, "empty or whitespace DPS register body: accept (registration ID from the username) | reject (400)")
}

// checkSwitches refuses a switch value outside its documented set.
func checkSwitches(sw Switches) error {
	for _, c := range []struct {
		flag, value string
		allowed     []string
	}{
		{"dps-id-mismatch", sw.DPSIDMismatch, []string{"connack", "register"}},
		{"disabled-enrollment", sw.DisabledEnrollment, []string{"status", "401"}},
		{"dps-response-qos", sw.DPSResponseQoS, []string{"granted", "0"}},
		{"hub-retain", sw.HubRetain, []string{"property", "close"}},
		{"hub-unknown-topic", sw.HubUnknownTopic, []string{"close", "ignore"}},
		{"dps-max-tls", sw.DPSMaxTLS, []string{"1.2", "1.3"}},
		{"hub-max-tls", sw.HubMaxTLS, []string{"1.2", "1.3"}},
		{"api-versions", sw.APIVersions, []string{"strict", "lenient"}},
		{"csr-old-api", sw.CSROldAPI, []string{"ignore", "reject"}},
		{"csr-without-policy", sw.CSRWithoutPolicy, []string{"ignore", "reject"}},
		{"hub-credentials-topic", sw.HubCredentialsTopic, []string{"both", "credentials", "credential"}},
		{"hub-credentials-response", sw.HubCredentialsResponse, []string{"array", "object"}},
		{"dps-error-message-field", sw.DPSErrorMessageField, []string{"message", "errorMessage", "both"}},
		{"empty-register-body", sw.EmptyRegisterBody, []string{"accept", "reject"}},
	} {
		if !slices.Contains(c.allowed, c.value) {
			return fmt.Errorf("--%s %q: want one of %s", c.flag, c.value, strings.Join(c.allowed, ", "))
		}
	}
	return nil
}

// keyValues parses repeated NAME=VALUE flags.
func keyValues(m multi, flagName string) (map[string]string, error) {
	out := map[string]string{}
	for _, x := range m {
		k, v, ok := strings.Cut(x, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--%s %q: want NAME=VALUE", flagName, x)
		}
		out[k] = v
	}
	return out, nil
}

// hubConfigs builds the hubs of --hubs with their per-hub flags.
func (sf *serveFlags) hubConfigs() ([]HubConfig, error) {
	per := map[string]map[string]string{}
	for _, f := range []struct {
		name string
		vals multi
	}{{"hub-addr", sf.hubAddr}, {"hub-ws-addr", sf.hubWS}, {"hub-host", sf.hubHost}, {"hub-latency", sf.hubLatency}} {
		m, err := keyValues(f.vals, f.name)
		if err != nil {
			return nil, err
		}
		per[f.name] = m
	}
	var hubs []HubConfig
	known := map[string]bool{}
	for _, n := range strings.Split(sf.hubs, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		h := HubConfig{Name: n, Host: per["hub-host"][n], Addr: per["hub-addr"][n], WSAddr: per["hub-ws-addr"][n], ApplyAllocationPolicy: true, AllocationWeight: 1}
		if v, ok := per["hub-latency"][n]; ok {
			ms, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("--hub-latency %s=%s: %v", n, v, err)
			}
			h.LatencyMs = ms
		}
		hubs = append(hubs, h)
		known[n] = true
	}
	for _, m := range per {
		for k := range m {
			if !known[k] {
				return nil, fmt.Errorf("hub %q is not in --hubs %q", k, sf.hubs)
			}
		}
	}
	return hubs, nil
}

// readCAFiles reads the --est-client-ca PEM files.
func readCAFiles(files []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--est-client-ca: %w", err)
		}
		certs, err := ParsePEMCerts(b)
		if err != nil {
			return nil, fmt.Errorf("--est-client-ca %s: %w", f, err)
		}
		out = append(out, certs...)
	}
	return out, nil
}
