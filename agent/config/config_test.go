package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultIsValid(t *testing.T) {
	t.Parallel()
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestLoadRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "config.toml")
	doc := `
state_dir = "/tmp/devid"
device_id = "board-0001"
[key]
backend = "file:/tmp/devid/device.key"
[dps]
endpoint = "localhost:8883"
id_scope = "0ne0000SIM1"
[network.resolve]
"localhost" = "127.0.0.1:45000"
"sim-hub-1.azure-devices.net" = "127.0.0.1:45001"
[hub]
keepalive = "60s"
`
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.DeviceID != "board-0001" || c.Hub.KeepAlive.D().Seconds() != 60 || c.Network.Resolve["localhost"] != "127.0.0.1:45000" {
		t.Fatalf("loaded %+v", c)
	}
	if c.Queue.Fsync != "batch" {
		t.Fatalf("default not kept: fsync=%q", c.Queue.Fsync)
	}
	// The printed effective config parses back to the same thing.
	b, err := c.TOML()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(b)
	if err != nil {
		t.Fatalf("effective config does not parse back: %v\n%s", err, b)
	}
	b2, _ := c2.TOML()
	if string(b) != string(b2) {
		t.Fatalf("round trip differs:\n%s\n---\n%s", b, b2)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	t.Parallel()
	cases := []struct{ doc, want string }{
		{`bogus = 1`, `unknown key "bogus"`},
		{"[dps]\nidscope = \"x\"", `unknown key "dps.idscope"`},
		{`state_dir = "relative"`, "state_dir: \"relative\" is not an absolute path"},
		{`device_id = "Upper"`, "device_id:"},
		{"[key]\nbackend = \"pkcs11:x\"", "key.backend:"},
		{"[factory]\nbaud = 1234", "factory.baud: 1234"},
		{"[factory]\nusb_gadget = true\nport = \"/dev/ttyS0\"", "factory.usb_gadget: factory.port is set too"},
		{"[factory]\nusb_id = \"1d6b\"", "factory.usb_id: USB ID \"1d6b\": want VVVV:PPPP"},
		{"[factory]\nusb_product = \"\"", "factory.usb_product: USB product is empty"},
		{"[factory]\nusb_manufacturer = \"a\\nb\"", "factory.usb_manufacturer:"},
		{"[factory]\nusb_udc = \"../x\"", "factory.usb_udc:"},
		{"[dps]\nendpoint = \"nohost\"", "dps.endpoint:"},
		{"[dps]\ntimeout = \"soon\"", "dps.timeout"},
		{"[dps]\npayload = \"{\"", "dps.payload: is not a JSON document"},
		{"[hub]\nkeepalive = \"2h\"", "hub.keepalive"},
		{"[hub]\nmax_failures = 0", "hub.max_failures"},
		{"[network]\nproxy = \"socks5://x:1\"", "network.proxy"},
		{"[network.resolve]\nhost = \"nope\"", "network.resolve.host"},
		{"[retry]\nmin_delay = \"1m\"\nmax_delay = \"1s\"", "retry.max_delay"},
		{"[retry]\nrevoked_min = \"1s\"", "retry.revoked_min"},
		{"[queue]\nfsync = \"sometimes\"", "queue.fsync"},
		{"[queue]\nmax_bytes = 10", "queue.max_bytes"},
		{"[local_api]\nmax_message = 0", "local_api.max_message"},
		{"[local_api]\nmax_clients_per_uid = 0", "local_api.max_clients_per_uid"},
		{"[local_api]\nidle_timeout = \"10ms\"", "local_api.idle_timeout"},
		{"[health]\ninterval = \"1s\"", "health.interval"},
		{"state_dir = ", "line 1"},
		{"[renewal]\npath = \"iothub\"", `renewal.path: "iothub" is not auto, dps, hub, est or none`},
		{"[renewal]\nest_url = \"http://est.example\"", "renewal.est_url"},
		{"[renewal]\npath = \"est\"", "renewal.est_url"},
		{"[renewal]\nkey_curve = \"P-521\"", "renewal.key_curve"},
		{"[renewal]\nkey_curve = \"p384\"", "renewal.key_curve"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.doc))
		if err == nil {
			t.Errorf("%q: no error", tc.doc)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not contain %q", tc.doc, err, tc.want)
		}
	}
}

// TestRenewalPaths: every documented renewal.path is accepted.
func TestRenewalPaths(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"auto", "dps", "hub", "none"} {
		c, err := Parse([]byte("[renewal]\npath = \"" + p + "\""))
		if err != nil || c.Renewal.Path != p {
			t.Errorf("renewal.path %q: %v", p, err)
		}
	}
}

// TestRenewalDefaultsToAuto: a config that says nothing about renewal
// renews (docs/rotation.md, path auto), rather than never.
func TestRenewalDefaultsToAuto(t *testing.T) {
	t.Parallel()
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Renewal.Path != "auto" {
		t.Errorf("default renewal.path = %q, want auto", c.Renewal.Path)
	}
}

func TestAllProblemsReported(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte("state_dir = \"x\"\nlog_level = \"loud\"\n[queue]\nfsync = \"no\""))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("state_dir = \"/var/lib/devid\"\n[dps]\nid_scope = \"0ne1\"\n"))
	f.Add([]byte("[network.resolve]\n\"a\" = \"127.0.0.1:1\"\n[hub]\nkeepalive = \"1m\"\n"))
	f.Add([]byte("[queue]\nmax_bytes = -1\n"))
	f.Add([]byte("[[dps]]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		// Whatever parses must validate and print back to a parseable document.
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid config: %v", err)
		}
		out, err := c.TOML()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("effective config does not parse back: %v\n%s", err, out)
		}
	})
}

// TestRenewalKeyCurve: renewal.key_curve defaults to P-256 and takes P-384.
func TestRenewalKeyCurve(t *testing.T) {
	t.Parallel()
	if c := Default(); c.Renewal.KeyCurve != "P-256" {
		t.Errorf("default key_curve %q, want P-256", c.Renewal.KeyCurve)
	}
	for _, v := range []string{"P-256", "P-384"} {
		c, err := Parse([]byte("[renewal]\npath = \"dps\"\nkey_curve = \"" + v + "\""))
		if err != nil || c.Renewal.KeyCurve != v {
			t.Errorf("renewal.key_curve %q: %+v, %v", v, c, err)
		}
	}
}

// TestProxyPasswordNeverPrinted: validation errors and the printable copy
// of the config mask the password of network.proxy (and renewal.est_url).
func TestProxyPasswordNeverPrinted(t *testing.T) {
	for _, proxy := range []string{
		"https://alice:s3cret@proxy.example:3128",  // wrong scheme
		"http://alice:s3cret@",                     // no host
		"http://alice:s3cret@proxy example:3128/%", // not a URL at all
	} {
		_, err := Parse([]byte("[network]\nproxy = \"" + proxy + "\"\n"))
		if err == nil {
			t.Fatalf("%s: accepted", proxy)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("validation error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "network.proxy") {
			t.Errorf("validation error does not name the field: %v", err)
		}
	}
	c, err := Parse([]byte("[network]\nproxy = \"http://alice:s3cret@proxy.example:3128\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Redacted().TOML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "s3cret") || !strings.Contains(string(b), "alice:xxxxx@proxy.example:3128") {
		t.Errorf("redacted config:\n%s", b)
	}
	if c.Network.Proxy != "http://alice:s3cret@proxy.example:3128" {
		t.Errorf("Redacted changed the config itself: %q", c.Network.Proxy)
	}
}

// TestEveryProblemAtOnce: unknown keys, type errors and bad values are
// all reported in one go, with their lines and in the config's words.
func TestEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	doc := "bogus = 1\n[dps]\nid_scope = 12\ntimeout = 30\n[hub]\nkeepalive = \"soon\"\nmax_failures = 0\n[network]\nproxy = \"ftp://u:s3cret@p:1\"\n"
	_, err := Parse([]byte(doc))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a ValidationError", err)
	}
	want := []string{
		`line 1: unknown key "bogus"`,
		`line 3: dps.id_scope: expected a string, got an integer`,
		`line 4: dps.timeout: 30 has no unit; write a duration like "30s" or "5m"`,
		`line 6: hub.keepalive: "soon" is not a duration`,
		`line 7: hub.max_failures: 0 is outside 1..1000`,
		`line 9: network.proxy:`,
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("missing %q in:\n%s", w, msg)
		}
	}
	for _, leak := range []string{"s3cret", "struct field", "config.DPS", "toml:"} {
		if strings.Contains(msg, leak) {
			t.Errorf("message leaks %q:\n%s", leak, msg)
		}
	}
}

// TestRefusesWhatCannotBeMeant: too-short durations and system
// directories as state_dir.
func TestRefusesWhatCannotBeMeant(t *testing.T) {
	t.Parallel()
	cases := []struct{ doc, want string }{
		{"[retry]\nmin_delay = \"1ms\"", "retry.min_delay: 1ms is too short"},
		{"[dps]\ntimeout = \"1s\"", "dps.timeout: 1s is too short"},
		{"[hub]\nconnect_timeout = \"1ms\"", "hub.connect_timeout: 1ms is too short"},
		{`state_dir = "/"`, `state_dir: "/" is a system directory`},
		{`state_dir = "/tmp/"`, `state_dir: "/tmp/" is a system directory`},
		{`state_dir = "/etc"`, `state_dir: "/etc" is a system directory`},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.doc, err, tc.want)
		}
	}
}
