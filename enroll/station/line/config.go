package line

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"

	"devid/enroll/station/jig"
	"devid/hal/serial"
)

// DefaultSerialDir is where relative slot ports are looked up: udev keeps
// the stable names of USB serial adapters under by-id and by-path there.
const DefaultSerialDir = "/dev/serial"

// Defaults of a station configuration.
const (
	DefaultScanInterval = time.Second
	DefaultBaud         = 115200
)

// Watch modes: how a station notices boards arriving and leaving.
const (
	// WatchAuto uses netlink uevents where the kernel offers them, and
	// the periodic scan always.
	WatchAuto = "auto"
	// WatchNetlink is WatchAuto, but failing to listen to uevents is an
	// error.
	WatchNetlink = "netlink"
	// WatchPoll scans every ScanInterval only.
	WatchPoll = "poll"
)

// Config is a station configuration (station.toml, docs/station.md).
type Config struct {
	// Station names this station in the ledger and the events (default:
	// the host name).
	Station string
	// CADir is the local CA directory (devid-jig ca init).
	CADir string
	// ESTURL, instead of CADir, signs through an EST server; ESTCert and
	// ESTKey are the station's client certificate and key, ESTCA the
	// roots that verify the server (PEM files). Issuances are recorded
	// in Ledger, which must then be a postgres:// URL (docs/ca.md, "EST
	// and the shared ledger").
	ESTURL, ESTCert, ESTKey, ESTCA string
	// Ledger overrides the CA policy's ledger: a postgres:// URL shared
	// by every station of a line, or "file" ("" keeps the policy's;
	// docs/ca.md).
	Ledger string
	// SerialDir is the root relative slot ports are resolved against.
	SerialDir string
	// Watch is WatchAuto, WatchNetlink or WatchPoll.
	Watch string
	// ScanInterval is the period of the scan of every slot.
	ScanInterval time.Duration
	// Baud is the serial line rate.
	Baud int
	// ReplyTimeout and Retries tune the jig (zero: the jig's defaults).
	ReplyTimeout time.Duration
	Retries      int
	// Listen is the address of the web page and /metrics ("" none).
	Listen string
	// TPMRoots is a PEM file of TPM maker roots: boards that offer
	// attestation must prove their key is in such a TPM ("": boards are
	// not asked; outcome not-checked).
	TPMRoots string
	// RequireAttestation refuses boards that do not prove a TPM key. It
	// needs TPMRoots; a CA policy with require_tpm_attestation sets it.
	RequireAttestation bool
	// Slots are the station's slots, in display order.
	Slots []SlotConfig
}

// SlotConfig is one slot.
type SlotConfig struct {
	// Name labels the slot (default: its number from 1).
	Name string `toml:"name"`
	// Port is a serial device path or a glob (path.Match syntax); a
	// relative one is under the station's SerialDir. A glob must match
	// at most one port at a time. usb:SERIAL is the tty of the USB
	// device with that serial number (a glob too): a board's USB gadget
	// carries its device ID there (docs/factory-usb.md).
	Port string `toml:"port"`
}

// configFile is station.toml as written.
type configFile struct {
	Station      string       `toml:"station"`
	CADir        string       `toml:"ca_dir"`
	Ledger       string       `toml:"ledger"`
	ESTURL       string       `toml:"est_url"`
	ESTCert      string       `toml:"est_cert"`
	ESTKey       string       `toml:"est_key"`
	ESTCA        string       `toml:"est_ca"`
	SerialDir    string       `toml:"serial_dir"`
	Watch        string       `toml:"watch"`
	ScanInterval string       `toml:"scan_interval"`
	Baud         int          `toml:"baud"`
	ReplyTimeout string       `toml:"reply_timeout"`
	Retries      int          `toml:"retries"`
	Listen       string       `toml:"listen"`
	TPMRoots     string       `toml:"tpm_roots"`
	RequireAtt   bool         `toml:"require_attestation"`
	Slots        []SlotConfig `toml:"slot"`
}

// LoadConfig reads and checks a station configuration file. A relative
// ca_dir or serial_dir is relative to the file's directory.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("station config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("station config %s: %w", path, err)
	}
	base := filepath.Dir(path)
	if abs, err := filepath.Abs(base); err == nil {
		base = abs
	}
	if c.CADir != "" && !filepath.IsAbs(c.CADir) {
		c.CADir = filepath.Join(base, c.CADir)
	}
	for _, p := range []*string{&c.TPMRoots, &c.ESTCert, &c.ESTKey, &c.ESTCA} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if !filepath.IsAbs(c.SerialDir) {
		c.SerialDir = filepath.Join(base, c.SerialDir)
	}
	return c, nil
}

// ParseConfig parses and checks a station configuration (TOML).
func ParseConfig(b []byte) (*Config, error) {
	var f configFile
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) && len(sm.Errors) > 0 {
			var keys []string
			for _, e := range sm.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return nil, fmt.Errorf("unknown key %s (docs/station.md lists the keys)", strings.Join(keys, ", "))
		}
		return nil, err
	}
	c := &Config{Station: f.Station, CADir: f.CADir, Ledger: f.Ledger, SerialDir: f.SerialDir, Watch: f.Watch, Baud: f.Baud,
		Retries: f.Retries, Listen: f.Listen, TPMRoots: f.TPMRoots, RequireAttestation: f.RequireAtt, Slots: f.Slots,
		ESTURL: f.ESTURL, ESTCert: f.ESTCert, ESTKey: f.ESTKey, ESTCA: f.ESTCA}
	switch {
	case c.CADir != "" && c.ESTURL != "":
		return nil, errors.New("ca_dir and est_url are both set: a station signs with one (a local CA or an EST server)")
	case c.ESTURL != "" && (c.ESTCert == "" || c.ESTKey == "" || c.ESTCA == ""):
		return nil, errors.New("est_url needs est_cert, est_key and est_ca (the station's client certificate, its key, the roots of the EST server)")
	}
	for _, d := range []struct {
		name, s string
		dst     *time.Duration
		def     time.Duration
	}{
		{"scan_interval", f.ScanInterval, &c.ScanInterval, DefaultScanInterval},
		{"reply_timeout", f.ReplyTimeout, &c.ReplyTimeout, jig.DefaultReplyTimeout},
	} {
		if d.s == "" {
			*d.dst = d.def
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%s = %q: want a positive Go duration such as \"500ms\"", d.name, d.s)
		}
		*d.dst = v
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// check fills in defaults and refuses what cannot work.
func (c *Config) check() error {
	if c.SerialDir == "" {
		c.SerialDir = DefaultSerialDir
	}
	if c.Watch == "" {
		c.Watch = WatchAuto
	}
	switch c.Watch {
	case WatchAuto, WatchNetlink, WatchPoll:
	default:
		return fmt.Errorf("watch = %q: want %q, %q or %q", c.Watch, WatchAuto, WatchNetlink, WatchPoll)
	}
	if c.ScanInterval <= 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.Baud == 0 {
		c.Baud = DefaultBaud
	}
	if c.Baud < 0 {
		return fmt.Errorf("baud = %d: want a positive line rate", c.Baud)
	}
	if c.Retries < 0 {
		return fmt.Errorf("retries = %d: want 0 (the jig's default) or more", c.Retries)
	}
	if c.RequireAttestation && c.TPMRoots == "" {
		return errors.New("require_attestation = true needs tpm_roots (a PEM file of TPM maker roots)")
	}
	if len(c.Slots) == 0 {
		return errors.New("no [[slot]]: a station needs at least one slot")
	}
	names, ports := map[string]bool{}, map[string]bool{}
	for i := range c.Slots {
		s := &c.Slots[i]
		if s.Name == "" {
			s.Name = fmt.Sprint(i + 1)
		}
		if strings.ContainsAny(s.Name, " \t\r\n\"<>&") || len(s.Name) > 64 {
			return fmt.Errorf("slot %d: name %q: want at most 64 characters without spaces, quotes or <>&", i+1, s.Name)
		}
		if names[s.Name] {
			return fmt.Errorf("slot %d: name %q is used by another slot", i+1, s.Name)
		}
		names[s.Name] = true
		if s.Port == "" || s.Port == serial.USBPrefix {
			return fmt.Errorf("slot %s: no port: give a device path, a glob such as \"by-id/usb-FTDI_*-if00-port0\" or usb:SERIAL", s.Name)
		}
		if _, err := filepath.Match(s.Port, ""); err != nil {
			return fmt.Errorf("slot %s: port %q is not a valid glob: %v", s.Name, s.Port, err)
		}
		if ports[s.Port] {
			return fmt.Errorf("slot %s: port %q is given for another slot too", s.Name, s.Port)
		}
		ports[s.Port] = true
	}
	return nil
}

// pattern is the slot's port as an absolute path or glob, or usb:SERIAL.
func (s SlotConfig) pattern(serialDir string) string {
	if filepath.IsAbs(s.Port) || serial.IsUSB(s.Port) {
		return s.Port
	}
	return filepath.Join(serialDir, s.Port)
}

// presence is what a scan found on a slot: the port's path and an
// identity that changes when a different board (or the same one again)
// appears there.
type presence struct {
	path, id string
}

// resolve looks for the slot's port. No port is a zero presence; a glob
// matching more than one port is an error. usb:SERIAL is looked up anew
// on every scan, so a board that comes back on another node (ttyACM0,
// then ttyACM1 after a reset) is found there.
func resolve(pattern string, usb serial.USBResolver) (presence, error) {
	paths := []string{pattern}
	if serial.IsUSB(pattern) {
		p, err := usb.Resolve(strings.TrimPrefix(pattern, serial.USBPrefix))
		switch {
		case errors.Is(err, serial.ErrNoUSBPort):
			return presence{}, nil
		case err != nil:
			return presence{}, err
		}
		paths = []string{p}
	} else if strings.ContainsAny(pattern, `*?[\`) {
		m, err := filepath.Glob(pattern)
		if err != nil {
			return presence{}, err
		}
		if len(m) > 1 {
			return presence{}, fmt.Errorf("glob %s matches %d ports (%s): a slot takes one", pattern, len(m), strings.Join(m, ", "))
		}
		paths = m
	}
	if len(paths) == 0 {
		return presence{}, nil
	}
	p := paths[0]
	lfi, err := os.Lstat(p)
	if err != nil {
		return presence{}, nil
	}
	target, err := filepath.EvalSymlinks(p)
	if err != nil {
		return presence{}, nil // a dangling link: the device node is gone
	}
	fi, err := os.Stat(target)
	if err != nil {
		return presence{}, nil
	}
	// A replugged adapter gets a new link (a new mtime) and a new device
	// node (a new inode); either marks a new board. The node's own times
	// change with every byte, so they are not part of the identity.
	var linkTime int64
	if lfi.Mode()&os.ModeSymlink != 0 {
		linkTime = lfi.ModTime().UnixNano()
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = uint64(st.Ino)
	}
	return presence{path: p, id: fmt.Sprintf("%s|%d|%d", target, ino, linkTime)}, nil
}
