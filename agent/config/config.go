// Package config is the devid agent's configuration: a TOML file
// (default /etc/devid/config.toml), documented defaults, and a Validate
// that names every wrong field and says what is wrong with it.
//
// The order is always: Default, then the file on top (unknown keys are
// errors), then Validate. docs/config.md documents every field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"devid/enroll/rotate"
)

// DefaultPath is where the agent looks for its config when --config is not given.
const DefaultPath = "/etc/devid/config.toml"

// MaxFileSize bounds the config file: anything bigger is not a config.
const MaxFileSize = 1 << 20

// Config is the agent's whole configuration. Field names are the TOML keys.
type Config struct {
	// StateDir holds the key (file backend), certificate chain, cached
	// DPS assignment, telemetry queue and status file. Mode 0700.
	StateDir string `toml:"state_dir"`
	// DeviceID overrides the board-derived device ID. Empty: derive it
	// (devicetree serial-number, DMI product serial, first MAC).
	DeviceID string `toml:"device_id"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json (both go to stderr, i.e. the journal).
	LogFormat string `toml:"log_format"`

	Key      Key      `toml:"key"`
	Factory  Factory  `toml:"factory"`
	DPS      DPS      `toml:"dps"`
	Hub      Hub      `toml:"hub"`
	Network  Network  `toml:"network"`
	Retry    Retry    `toml:"retry"`
	Clock    Clock    `toml:"clock"`
	LocalAPI LocalAPI `toml:"local_api"`
	Queue    Queue    `toml:"queue"`
	Health   Health   `toml:"health"`
	Hardware Hardware `toml:"hardware"`
	Renewal  Renewal  `toml:"renewal"`
	Debug    Debug    `toml:"debug"`
}

// Renewal is the certificate renewal policy (issue 8; grammar in
// docs/rotation.md). Empty policy fields keep the rotate package defaults.
type Renewal struct {
	// Path is the issuance path: "dps" (DPS certificate issuance with a
	// CSR), "hub" (IoT Hub $iothub/credentials, preview; first issuance
	// and recovery through DPS), "est" (EST /simplereenroll) or "none".
	Path string `toml:"path"`
	// ESTURL is the EST server for path "est".
	ESTURL string `toml:"est_url"`
	// RotateKey makes each renewal use a new key.
	RotateKey bool `toml:"rotate_key"`
	// KeyCurve is the curve of operational keys the agent makes for the
	// dps and hub paths (the first one and each rotated one): "P-256"
	// (default) or "P-384". Existing keys keep their curve until rotated.
	KeyCurve string `toml:"key_curve"`
	// RenewAt is the share of the lifetime after which renewal starts ("66%", "2/3").
	RenewAt string `toml:"renew_at"`
	// Jitter moves renewal earlier by a random part of this ("5%" or "1h").
	Jitter string `toml:"jitter"`
	// Retry is the wait after a failed renewal ("1h" or a share).
	Retry string `toml:"retry"`
	// Margin starts renewal no later than this before expiry ("10%" or "24h").
	Margin string `toml:"margin"`
}

// Key selects the key backend.
type Key struct {
	// Backend is "auto", "file:PATH" or "tpm:PATH-or-socket".
	Backend string `toml:"backend"`
}

// Factory configures factory mode (the jig's serial protocol).
type Factory struct {
	// Port is the serial device the jig talks on. Empty: factory mode
	// only through the factory button.
	Port string `toml:"port"`
	// Baud is the serial line rate.
	Baud int `toml:"baud"`
	// Root is the PEM trust anchor the device certificate must chain to.
	Root string `toml:"root"`
}

// DPS configures the Device Provisioning Service.
type DPS struct {
	// Endpoint is host:port of the DPS device endpoint.
	Endpoint string `toml:"endpoint"`
	// IDScope is the DPS instance's ID scope (0ne...).
	IDScope string `toml:"id_scope"`
	// TrustBundle is a PEM file of roots for DPS and hub server
	// certificates. Empty: the Azure roots embedded in the binary.
	TrustBundle string `toml:"trust_bundle"`
	// Transport is "mqtt" (port 8883) or "websocket" (MQTT over WSS, 443).
	Transport string `toml:"transport"`
	// Payload is an optional custom allocation payload (a JSON document).
	Payload string `toml:"payload"`
	// Timeout bounds one whole registration, polls included.
	Timeout Duration `toml:"timeout"`
}

// Hub configures the IoT Hub connection.
type Hub struct {
	// KeepAlive is the MQTT keepalive; IoT Hub allows at most 1177 s.
	KeepAlive Duration `toml:"keepalive"`
	// MaxFailures is how many consecutive hub connection failures send
	// the agent back to DPS (Azure's MAX_HUB_RETRY, default 10).
	MaxFailures int `toml:"max_failures"`
	// ReprovisionAfter is the least time the hub must have been failing
	// before those failures send the agent back to DPS (Azure: "try the
	// same hub for 15-30 minutes before going back to DPS").
	ReprovisionAfter Duration `toml:"reprovision_after"`
	// ConnectTimeout bounds one connection attempt (TCP+TLS+CONNECT).
	ConnectTimeout Duration `toml:"connect_timeout"`
}

// Network holds dial overrides and the proxy.
type Network struct {
	// Resolve maps "host" or "host:port" to the "ip:port" to dial
	// instead; TLS still uses the original host name. For the
	// simulator and QEMU.
	Resolve map[string]string `toml:"resolve"`
	// Proxy is an http://host:port CONNECT proxy. Empty: none.
	Proxy string `toml:"proxy"`
}

// Retry is the backoff policy for DPS and hub failures.
type Retry struct {
	// MinDelay is the first retry delay; it doubles per failure.
	MinDelay Duration `toml:"min_delay"`
	// MaxDelay caps the delay.
	MaxDelay Duration `toml:"max_delay"`
	// Jitter is the most random delay added to each retry.
	Jitter Duration `toml:"jitter"`
	// RevokedMin is the least wait between retries while the
	// certificate is revoked (at least 1m).
	RevokedMin Duration `toml:"revoked_min"`
	// RevokedMax caps the wait between retries while revoked.
	RevokedMax Duration `toml:"revoked_max"`
}

// Clock configures the boot-time clock sanity wait.
type Clock struct {
	// MaxWait bounds how long the agent waits for a sane clock before
	// it reports "clock not synchronised" and keeps waiting more slowly.
	MaxWait Duration `toml:"max_wait"`
	// RequireSync additionally waits for the kernel to report NTP
	// synchronisation (adjtimex), not just a plausible time.
	RequireSync bool `toml:"require_sync"`
}

// LocalAPI configures the Unix socket for applications on the board.
type LocalAPI struct {
	// Socket is the socket path. Empty disables the local API.
	Socket string `toml:"socket"`
	// Group owns the socket (mode 0660). If it does not exist the
	// socket stays owned by the agent's group and the agent says so.
	Group string `toml:"group"`
	// MaxMessage is the largest telemetry body accepted, in bytes.
	MaxMessage int `toml:"max_message"`
	// MaxClients bounds concurrent local connections.
	MaxClients int `toml:"max_clients"`
}

// Queue configures the durable telemetry queue under state_dir/queue.
type Queue struct {
	// MaxBytes bounds the queue on disk; the oldest messages are dropped
	// (and counted) beyond it.
	MaxBytes int64 `toml:"max_bytes"`
	// SegmentBytes is the size at which a new segment file is started.
	SegmentBytes int64 `toml:"segment_bytes"`
	// Fsync is "always" (fsync each message before acknowledging it to
	// the local app), "batch" (fsync at most every fsync_interval) or
	// "never" (leave it to the kernel).
	Fsync string `toml:"fsync"`
	// FsyncInterval is the batch fsync period.
	FsyncInterval Duration `toml:"fsync_interval"`
}

// Health configures built-in health reports.
type Health struct {
	// Interval is how often health goes out as telemetry and reported
	// properties. 0 sends it only on connect.
	Interval Duration `toml:"interval"`
}

// Hardware names the GPIO lines of the status LED and factory button.
type Hardware struct {
	// LED is the GPIO line name of the status LED. Empty: no LED.
	LED string `toml:"led"`
	// Button is the GPIO line name of the factory button. Empty: none.
	Button string `toml:"button"`
	// ButtonHold is how long the button must be held to enter factory mode.
	ButtonHold Duration `toml:"button_hold"`
}

// Debug holds knobs for tests and bring-up. Never set them in production.
type Debug struct {
	// AllowClockOverride lets the DEVID_CLOCK_FILE environment variable
	// shift the agent's clock (tests of 1970 boots and long outages).
	AllowClockOverride bool `toml:"allow_clock_override"`
}

// Default returns the documented defaults. DPS id_scope has none: it
// must be set before the agent can provision.
func Default() *Config {
	return &Config{
		StateDir:  "/var/lib/devid",
		LogLevel:  "info",
		LogFormat: "text",
		Key:       Key{Backend: "auto"},
		Factory: Factory{
			Baud: 115200,
			Root: "/etc/devid/factory-root.pem",
		},
		DPS: DPS{
			Endpoint:  "global.azure-devices-provisioning.net:8883",
			Transport: "mqtt",
			Timeout:   Duration(2 * time.Minute),
		},
		Hub: Hub{
			KeepAlive:        Duration(240 * time.Second),
			MaxFailures:      10,
			ReprovisionAfter: Duration(15 * time.Minute),
			ConnectTimeout:   Duration(30 * time.Second),
		},
		Network: Network{Resolve: map[string]string{}},
		Retry: Retry{
			MinDelay:   Duration(time.Second),
			MaxDelay:   Duration(100 * time.Second),
			Jitter:     Duration(5 * time.Second),
			RevokedMin: Duration(15 * time.Minute),
			RevokedMax: Duration(6 * time.Hour),
		},
		Clock: Clock{MaxWait: Duration(5 * time.Minute)},
		LocalAPI: LocalAPI{
			Socket:     "/run/devid/api.sock",
			Group:      "devid",
			MaxMessage: 256 * 1024,
			MaxClients: 32,
		},
		Queue: Queue{
			MaxBytes:      16 << 20,
			SegmentBytes:  1 << 20,
			Fsync:         "batch",
			FsyncInterval: Duration(time.Second),
		},
		Health: Health{Interval: Duration(time.Hour)},
		Renewal: Renewal{
			Path:     "none",
			KeyCurve: "P-256",
			RenewAt:  "66%",
			Jitter:   "5%",
			Retry:    "1h",
			Margin:   "10%",
		},
		Hardware: Hardware{ButtonHold: Duration(3 * time.Second)},
	}
}

// Load reads path on top of Default and validates the result. A missing
// file is an error; callers that accept "no file" use Parse(nil).
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("config: %s is a directory", path)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("config: %s is %d bytes; the limit is %d", path, st.Size(), MaxFileSize)
	}
	b := make([]byte, st.Size())
	if _, err := ioReadFull(f, b); err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a TOML document on top of Default and validates it.
func Parse(b []byte) (*Config, error) {
	c := Default()
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("document is %d bytes; the limit is %d", len(b), MaxFileSize)
	}
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, describeDecodeError(err)
	}
	if c.Network.Resolve == nil {
		c.Network.Resolve = map[string]string{}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func describeDecodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var msgs []string
		for _, e := range strict.Errors {
			row, col := e.Position()
			msgs = append(msgs, fmt.Sprintf("line %d column %d: unknown key %q", row, col, strings.Join(e.Key(), ".")))
		}
		return &ValidationError{Problems: msgs}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		key := strings.Join(de.Key(), ".")
		if key != "" {
			return fmt.Errorf("line %d column %d: %s: %s", row, col, key, de.Error())
		}
		return fmt.Errorf("line %d column %d: %s", row, col, de.Error())
	}
	return err
}

// ValidationError lists every problem found, one per field.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Validate checks every field and returns a *ValidationError naming each
// wrong one, or nil.
func (c *Config) Validate() error {
	var p []string
	bad := func(field, format string, args ...any) {
		p = append(p, field+": "+fmt.Sprintf(format, args...))
	}
	absPath := func(field, v string, required bool) {
		switch {
		case v == "" && required:
			bad(field, "must be set")
		case v == "":
		case !filepath.IsAbs(v):
			bad(field, "%q is not an absolute path", v)
		case strings.ContainsRune(v, 0):
			bad(field, "contains a NUL byte")
		}
	}
	positive := func(field string, d Duration) {
		if d <= 0 {
			bad(field, "must be a positive duration like \"30s\", got %s", d)
		}
	}

	absPath("state_dir", c.StateDir, true)
	if c.DeviceID != "" {
		if err := CheckDeviceID(c.DeviceID); err != nil {
			bad("device_id", "%v", err)
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format", "%q is not one of text, json", c.LogFormat)
	}

	switch scheme, arg, _ := strings.Cut(c.Key.Backend, ":"); scheme {
	case "auto":
		if arg != "" {
			bad("key.backend", "\"auto\" takes no argument, got %q", c.Key.Backend)
		}
	case "file":
		if arg != "" && !filepath.IsAbs(arg) {
			bad("key.backend", "file path %q is not absolute", arg)
		}
	case "tpm":
	default:
		bad("key.backend", "%q is not auto, file:PATH or tpm:PATH", c.Key.Backend)
	}

	absPath("factory.port", c.Factory.Port, false)
	switch c.Factory.Baud {
	case 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1500000, 2000000, 3000000:
	default:
		bad("factory.baud", "%d is not a standard serial rate (e.g. 115200)", c.Factory.Baud)
	}
	absPath("factory.root", c.Factory.Root, true)

	if err := checkHostPort(c.DPS.Endpoint); err != nil {
		bad("dps.endpoint", "%v", err)
	}
	if c.DPS.IDScope != "" && !idScopeRE.MatchString(c.DPS.IDScope) {
		bad("dps.id_scope", "%q is not an ID scope (letters and digits, like 0ne00000000)", c.DPS.IDScope)
	}
	absPath("dps.trust_bundle", c.DPS.TrustBundle, false)
	switch c.DPS.Transport {
	case "mqtt", "websocket":
	default:
		bad("dps.transport", "%q is not mqtt or websocket", c.DPS.Transport)
	}
	if c.DPS.Payload != "" && !jsonValid(c.DPS.Payload) {
		bad("dps.payload", "is not a JSON document")
	}
	positive("dps.timeout", c.DPS.Timeout)

	if c.Hub.KeepAlive < Duration(10*time.Second) || c.Hub.KeepAlive > Duration(1177*time.Second) {
		bad("hub.keepalive", "%s is outside 10s..1177s (IoT Hub drops idle links at 1.5x keepalive, capped at 1767s)", c.Hub.KeepAlive)
	}
	if c.Hub.MaxFailures < 1 || c.Hub.MaxFailures > 1000 {
		bad("hub.max_failures", "%d is outside 1..1000", c.Hub.MaxFailures)
	}
	positive("hub.connect_timeout", c.Hub.ConnectTimeout)
	if c.Hub.ReprovisionAfter < 0 {
		bad("hub.reprovision_after", "must not be negative")
	}

	for host, addr := range c.Network.Resolve {
		if host == "" || strings.ContainsAny(host, " /") {
			bad("network.resolve", "key %q is not a host name", host)
		}
		if err := checkHostPort(addr); err != nil {
			bad("network.resolve."+host, "%v", err)
		}
	}
	if c.Network.Proxy != "" {
		// Errors name the value with its password masked: they reach
		// logs and terminals.
		u, err := url.Parse(c.Network.Proxy)
		switch {
		case err != nil:
			bad("network.proxy", "%q is not a URL", RedactURL(c.Network.Proxy))
		case u.Scheme != "http":
			bad("network.proxy", "%q must be http://host:port (an HTTP CONNECT proxy)", RedactURL(c.Network.Proxy))
		case u.Host == "":
			bad("network.proxy", "%q has no host", RedactURL(c.Network.Proxy))
		}
	}

	positive("retry.min_delay", c.Retry.MinDelay)
	positive("retry.max_delay", c.Retry.MaxDelay)
	if c.Retry.MaxDelay < c.Retry.MinDelay {
		bad("retry.max_delay", "%s is below retry.min_delay %s", c.Retry.MaxDelay, c.Retry.MinDelay)
	}
	if c.Retry.Jitter < 0 {
		bad("retry.jitter", "must not be negative")
	}
	positive("retry.revoked_min", c.Retry.RevokedMin)
	positive("retry.revoked_max", c.Retry.RevokedMax)
	if c.Retry.RevokedMax < c.Retry.RevokedMin {
		bad("retry.revoked_max", "%s is below retry.revoked_min %s", c.Retry.RevokedMax, c.Retry.RevokedMin)
	}
	if c.Retry.RevokedMin > 0 && c.Retry.RevokedMin < Duration(time.Minute) && !c.Debug.AllowClockOverride {
		bad("retry.revoked_min", "%s would hammer the service; use at least 1m", c.Retry.RevokedMin)
	}

	positive("clock.max_wait", c.Clock.MaxWait)

	if c.LocalAPI.Socket != "" {
		absPath("local_api.socket", c.LocalAPI.Socket, false)
		if len(c.LocalAPI.Socket) > 107 {
			bad("local_api.socket", "path is %d bytes; Unix sockets allow 107", len(c.LocalAPI.Socket))
		}
	}
	if c.LocalAPI.Group != "" && !groupRE.MatchString(c.LocalAPI.Group) {
		bad("local_api.group", "%q is not a group name", c.LocalAPI.Group)
	}
	if c.LocalAPI.MaxMessage < 1 || c.LocalAPI.MaxMessage > 256*1024 {
		bad("local_api.max_message", "%d is outside 1..262144 (IoT Hub's 256 KB limit)", c.LocalAPI.MaxMessage)
	}
	if c.LocalAPI.MaxClients < 1 || c.LocalAPI.MaxClients > 1024 {
		bad("local_api.max_clients", "%d is outside 1..1024", c.LocalAPI.MaxClients)
	}

	if c.Queue.SegmentBytes < 64*1024 {
		bad("queue.segment_bytes", "%d is below 65536", c.Queue.SegmentBytes)
	}
	if c.Queue.MaxBytes < 2*c.Queue.SegmentBytes {
		bad("queue.max_bytes", "%d must be at least twice queue.segment_bytes (%d)", c.Queue.MaxBytes, c.Queue.SegmentBytes)
	}
	if c.Queue.SegmentBytes < int64(c.LocalAPI.MaxMessage)+64 {
		bad("queue.segment_bytes", "%d cannot hold one local_api.max_message (%d)", c.Queue.SegmentBytes, c.LocalAPI.MaxMessage)
	}
	switch c.Queue.Fsync {
	case "always", "batch", "never":
	default:
		bad("queue.fsync", "%q is not always, batch or never", c.Queue.Fsync)
	}
	positive("queue.fsync_interval", c.Queue.FsyncInterval)

	if c.Health.Interval < 0 {
		bad("health.interval", "must not be negative")
	} else if c.Health.Interval > 0 && c.Health.Interval < Duration(10*time.Second) {
		bad("health.interval", "%s is too frequent; use 0 (on connect only) or at least 10s", c.Health.Interval)
	}
	positive("hardware.button_hold", c.Hardware.ButtonHold)

	switch c.Renewal.Path {
	case "dps", "hub", "none":
	case "est":
		if u, err := url.Parse(c.Renewal.ESTURL); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("renewal.est_url", "%q must be an https:// URL when renewal.path is \"est\"", RedactURL(c.Renewal.ESTURL))
		}
	default:
		bad("renewal.path", "%q is not dps, hub, est or none", c.Renewal.Path)
	}
	switch c.Renewal.KeyCurve {
	case "", "P-256", "P-384":
	default:
		bad("renewal.key_curve", "%q is not \"P-256\" or \"P-384\"", c.Renewal.KeyCurve)
	}
	for _, f := range []struct{ key, v string }{
		{"renew_at", c.Renewal.RenewAt}, {"jitter", c.Renewal.Jitter}, {"retry", c.Renewal.Retry}, {"margin", c.Renewal.Margin},
	} {
		pol := rotate.DefaultPolicy()
		if err := pol.Set(f.key, f.v); f.v != "" && err != nil {
			bad("renewal."+f.key, "%v", err)
		}
	}

	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

// RedactURL masks the password of a URL's user information
// ("http://user:xxxxx@host"), also in strings url.Parse rejects. Every
// place that prints a URL from the config uses it.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return userinfoRE.ReplaceAllString(s, "//${1}xxxxx@")
}

// userinfoRE finds "//user:password@" in text that is not a valid URL.
var userinfoRE = regexp.MustCompile(`//([^/@:\s]*:)[^/@\s]*@`)

// Redacted returns a copy of c with URL passwords masked, for printing
// (config check, check). The agent itself uses c.
func (c *Config) Redacted() *Config {
	r := *c
	r.Network.Proxy = RedactURL(c.Network.Proxy)
	r.Renewal.ESTURL = RedactURL(c.Renewal.ESTURL)
	return &r
}

var (
	idScopeRE = regexp.MustCompile(`^[A-Za-z0-9]{1,32}$`)
	groupRE   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}\$?$`)
	deviceRE  = regexp.MustCompile(`^[a-z0-9\-._:]{1,128}$`)
)

// CheckDeviceID applies DPS's registration ID rules: lowercase
// alphanumerics and -._: only, at most 128 characters.
func CheckDeviceID(id string) error {
	if !deviceRE.MatchString(id) {
		return fmt.Errorf("%q is not a valid device ID (lowercase letters, digits and -._: only, 1..128 characters)", id)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", s, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not 1..65535", s, port)
	}
	return nil
}
