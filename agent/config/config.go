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
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"devid/hal/usbgadget"
)

// DefaultPath is where the agent looks for its config when --config is not given.
const DefaultPath = "/etc/devid/config.toml"

// MaxFileSize bounds the config file: anything bigger is not a config.
const MaxFileSize = 1 << 20

// Config is the agent's whole configuration. Field names are the TOML keys.
type Config struct {
	// StateDir holds the key (file backend), certificate chain, cached
	// DPS assignment, telemetry queue and status file. Mode 0700, owned
	// by the agent's user; never a system directory such as / or /tmp.
	StateDir string `toml:"state_dir"`
	// DeviceID overrides the board-derived device ID. Empty: derive it
	// (devicetree serial-number, DMI product serial, first MAC).
	DeviceID string `toml:"device_id"`
	// DeviceIDSource is where the factory reads the device ID: auto (the
	// order above), config, devicetree, dmi or mac. A named source that is
	// missing or unreadable is an error, never a fallback to another.
	DeviceIDSource string `toml:"device_id_source"`
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

// Renewal is the certificate renewal policy (grammar in
// docs/rotation.md). Empty policy fields keep the rotate package defaults.
type Renewal struct {
	// Path is the issuance path: "auto" (the default: "dps" where the
	// DPS enrollment issues certificates, else "est" when est_url is
	// set, else "none"; decided at the first registration,
	// docs/rotation.md), "dps" (DPS certificate issuance with a CSR),
	// "hub" (IoT Hub $iothub/credentials, preview; first issuance and
	// recovery through DPS), "est" (EST /simplereenroll) or "none".
	Path string `toml:"path"`
	// ESTURL is the EST server for path "est" (and "auto").
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
	// USBGadget makes the factory port a USB serial gadget (CDC ACM,
	// through configfs, with the device ID as USB serial number) and
	// serves on its /dev/ttyGS*; port must then be empty
	// (docs/factory-usb.md).
	USBGadget bool `toml:"usb_gadget"`
	// USBID is the gadget's USB vendor:product ID, in hexadecimal.
	USBID string `toml:"usb_id"`
	// USBManufacturer is the gadget's USB manufacturer string.
	USBManufacturer string `toml:"usb_manufacturer"`
	// USBProduct is the gadget's USB product string.
	USBProduct string `toml:"usb_product"`
	// USBUDC names the USB device controller the gadget binds to. Empty:
	// the first in /sys/class/udc.
	USBUDC string `toml:"usb_udc"`
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
	// Timeout bounds one whole registration, polls included (at least 5s).
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
	// ConnectTimeout bounds one connection attempt (TCP+TLS+CONNECT), at least 1s.
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
	// MinDelay is the first retry delay (at least 100ms); it doubles per failure.
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
	// any TLS: after it, the agent tries anyway when the clock is within a
	// day of the certificate's notBefore and the build date, however far
	// ahead the saved last-known-good time is.
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
	// MaxClientsPerUID bounds the connections of one peer user, so that
	// one application cannot take every slot.
	MaxClientsPerUID int `toml:"max_clients_per_uid"`
	// IdleTimeout closes a connection that has sent nothing for that long
	// and subscribed to nothing; subscribers stay connected.
	IdleTimeout Duration `toml:"idle_timeout"`
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
		StateDir:       "/var/lib/devid",
		DeviceIDSource: "auto",
		LogLevel:       "info",
		LogFormat:      "text",
		Key:            Key{Backend: "auto"},
		Factory: Factory{
			Baud:            115200,
			Root:            "/etc/devid/factory-root.pem",
			USBID:           fmt.Sprintf("%04x:%04x", usbgadget.DefaultVendorID, usbgadget.DefaultProductID),
			USBManufacturer: usbgadget.DefaultManufacturer,
			USBProduct:      usbgadget.DefaultProduct,
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
			Socket:           "/run/devid/api.sock",
			Group:            "devid",
			MaxMessage:       256 * 1024,
			MaxClients:       32,
			MaxClientsPerUID: 8,
			IdleTimeout:      Duration(5 * time.Minute),
		},
		Queue: Queue{
			MaxBytes:      16 << 20,
			SegmentBytes:  1 << 20,
			Fsync:         "batch",
			FsyncInterval: Duration(time.Second),
		},
		Health: Health{Interval: Duration(time.Hour)},
		Renewal: Renewal{
			Path:     "auto",
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
	c, err := Inspect(path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Inspect is Load for config check: with problems in the file it still
// returns the config as far as it decoded (nil only when the file cannot
// be read or is not TOML), so the referenced files and groups can be
// checked in the same run.
func Inspect(path string) (*Config, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	c, err := parse(b)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func readFile(path string) ([]byte, error) {
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
	return b, nil
}

// Parse decodes a TOML document on top of Default and validates it.
func Parse(b []byte) (*Config, error) {
	c, err := parse(b)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// parse is Parse that also returns what decoded when there are problems.
func parse(b []byte) (*Config, error) {
	c := Default()
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("document is %d bytes; the limit is %d", len(b), MaxFileSize)
	}
	// Every problem at once: unknown keys and wrong types first (with
	// their lines), then the validation of the keys that did decode.
	probs, bad, lines, err := scan(b)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		if b, err = withoutKeys(b, bad); err != nil {
			return nil, describeDecodeError(err)
		}
	}
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, describeDecodeError(err)
	}
	if c.Network.Resolve == nil {
		c.Network.Resolve = map[string]string{}
	}
	var ve *ValidationError
	if err := c.Validate(); errors.As(err, &ve) {
		for _, msg := range ve.Problems {
			field, _, _ := strings.Cut(msg, ":")
			if line, ok := lines[field]; ok {
				msg = fmt.Sprintf("line %d: %s", line, msg)
			}
			probs = append(probs, msg)
		}
	}
	if len(probs) > 0 {
		// In file order; problems of unset fields (no line) last.
		slices.SortStableFunc(probs, func(a, b string) int { return lineOf(a) - lineOf(b) })
		return c, &ValidationError{Problems: probs}
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

// lineOf is the line a problem names ("line 4: ..."), or a line past
// any file's end when it names none.
func lineOf(problem string) int {
	var n int
	if _, err := fmt.Sscanf(problem, "line %d:", &n); err != nil {
		return math.MaxInt32
	}
	return n
}

// Field is the config key a problem is about ("dps.id_scope" for
// "line 6: dps.id_scope: expected a string, got an integer"), or "" for
// a problem that names none.
func Field(problem string) string {
	if lineOf(problem) != math.MaxInt32 {
		_, problem, _ = strings.Cut(problem, ": ")
	}
	if strings.HasPrefix(problem, "unknown key") {
		return ""
	}
	f, _, ok := strings.Cut(problem, ": ")
	if !ok || strings.ContainsAny(f, " \"") {
		return ""
	}
	return f
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

// RedactURL masks the password of a URL's user information
// ("http://user:xxxxx@host"), also in strings url.Parse rejects. Every
// place that prints a URL from the config uses it.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return redactUserinfo(s)
}

// redactUserinfo masks every "//user:password@" in text that is not a valid
// URL, where user holds none of "/@:" and password none of "/@", and
// neither holds white space. (A hand scan rather than a regexp: the agent
// links no regexp engine.)
func redactUserinfo(s string) string {
	var b strings.Builder
	from := 0
	for i := 0; ; {
		k := strings.Index(s[i:], "//")
		if k < 0 {
			break
		}
		i += k
		j := i + 2
		for j < len(s) && !strings.ContainsRune("/@:", rune(s[j])) && !isSpace(s[j]) {
			j++
		}
		if j == len(s) || s[j] != ':' {
			i++
			continue
		}
		colon := j
		j++
		for j < len(s) && s[j] != '/' && s[j] != '@' && !isSpace(s[j]) {
			j++
		}
		if j == len(s) || s[j] != '@' {
			i++
			continue
		}
		b.WriteString(s[from : colon+1])
		b.WriteString("xxxxx@")
		from = j + 1
		i = from
	}
	if from == 0 {
		return s
	}
	b.WriteString(s[from:])
	return b.String()
}

// isSpace is RE2's \s: tab, newline, form feed, carriage return, space.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r'
}

// Redacted returns a copy of c with URL passwords masked, for printing
// (config check, check). The agent itself uses c.
func (c *Config) Redacted() *Config {
	r := *c
	r.Network.Proxy = RedactURL(c.Network.Proxy)
	r.Renewal.ESTURL = RedactURL(c.Renewal.ESTURL)
	return &r
}

// validIDScope reports whether s is a DPS ID scope: 1 to 32 ASCII letters
// and digits.
func validIDScope(s string) bool {
	if len(s) < 1 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// validGroupName reports whether s is a portable Unix group name: a lower
// case letter or '_', then up to 31 of [a-z0-9_-], with an optional
// trailing '$'.
func validGroupName(s string) bool {
	s = strings.TrimSuffix(s, "$")
	if len(s) < 1 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || c == '_' || i > 0 && ('0' <= c && c <= '9' || c == '-')
		if !ok {
			return false
		}
	}
	return true
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
