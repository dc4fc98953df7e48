// Package board reads the board's identity: the device ID that becomes the
// certificate CN and the DPS registration ID.
//
// Reader.Source (config device_id_source) names the one source to read:
// config, devicetree, dmi or mac. With auto (the default) the sources are
// tried in this documented order, and the first one that exists wins:
//
//  1. the configured value (config device_id or --device-id);
//  2. the devicetree serial number: /proc/device-tree/serial-number, then
//     /sys/firmware/devicetree/base/serial-number;
//  3. the DMI product serial: /sys/class/dmi/id/product_serial;
//  4. the first non-loopback, non-zero MAC address from
//     /sys/class/net/*/address, interfaces taken in sorted name order.
//
// A source that exists but cannot be read (DMI serials are often readable
// by root only) is an error, never a reason to fall through: an agent run
// as another user than the factory would otherwise derive another ID.
//
// Every path is read below a filesystem root (normally "/"), so tests point
// it at a fake tree. A value is normalised (trimmed of whitespace and NULs,
// lowercased) and must then satisfy the DPS registration ID rules; a value
// that does not is an error naming the source and the value, not a reason
// to fall through silently to the next source.
package board

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Source names where a device ID came from.
type Source string

// The sources, in the order they are tried.
const (
	SourceConfig     Source = "config"
	SourceDevicetree Source = "devicetree"
	SourceDMI        Source = "dmi"
	SourceMAC        Source = "mac"
	// SourceAuto tries the sources above in order.
	SourceAuto Source = "auto"
)

// Sources lists the values of config device_id_source.
var Sources = []Source{SourceAuto, SourceConfig, SourceDevicetree, SourceDMI, SourceMAC}

// MaxIDLen is DPS's limit on a registration ID.
const MaxIDLen = 128

// Sentinel errors callers branch on.
var (
	// ErrNoID means no source yielded a device ID.
	ErrNoID = errors.New("no device ID: set device_id in config or --device-id (no devicetree serial, DMI serial or MAC address found)")
	// ErrInvalidID means a value breaks the DPS registration ID rules.
	ErrInvalidID = errors.New("invalid device ID")
)

// IDError says which source produced a bad device ID and why it is bad.
type IDError struct {
	Source Source
	Value  string
	Reason string
}

func (e *IDError) Error() string {
	return fmt.Sprintf("%v from %s %q: %s", ErrInvalidID, e.Source, e.Value, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidID) true.
func (e *IDError) Unwrap() error { return ErrInvalidID }

// Identity yields the device ID. Reader is the real implementation and Fake
// the test double.
type Identity interface {
	DeviceID() (id string, src Source, err error)
}

// Reader reads the device ID from the board.
type Reader struct {
	// Root is the filesystem root the sysfs/procfs paths are read under;
	// empty means "/".
	Root string
	// Configured, when non-empty, wins over every board source (with
	// Source auto or config).
	Configured string
	// Source is the one source to read; "" is SourceAuto.
	Source Source
}

var _ Identity = Reader{}

// DMI serials that vendors leave as placeholders: treat them as absent.
var dmiPlaceholders = map[string]bool{
	"": true, "0": true, "none": true, "n/a": true, "na": true, "default string": true,
	"not specified": true, "not applicable": true, "to be filled by o.e.m.": true,
	"system serial number": true, "0123456789": true, "123456789": true, "chassis serial number": true,
}

// DeviceID returns the normalised device ID and the source it came from.
func (r Reader) DeviceID() (string, Source, error) {
	root := r.Root
	if root == "" {
		root = "/"
	}
	src := r.Source
	if src == "" {
		src = SourceAuto
	}
	if !slices.Contains(Sources, src) {
		return "", "", fmt.Errorf("device ID source %q: want one of %v", src, Sources)
	}
	if src == SourceConfig || (src == SourceAuto && r.Configured != "") {
		if r.Configured == "" {
			return "", SourceConfig, errors.New("device_id_source is config, but device_id is not set (config device_id or --device-id)")
		}
		id, err := Normalize(SourceConfig, r.Configured)
		return id, SourceConfig, err
	}
	try := func(s Source) bool { return src == SourceAuto || src == s }
	if try(SourceDevicetree) {
		for _, p := range []string{"proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number"} {
			v, found, err := readValue(filepath.Join(root, p))
			if err != nil {
				return "", SourceDevicetree, err
			}
			if found && v != "" {
				id, err := Normalize(SourceDevicetree, v)
				return id, SourceDevicetree, err
			}
		}
	}
	if try(SourceDMI) {
		v, found, err := readValue(filepath.Join(root, "sys/class/dmi/id/product_serial"))
		if err != nil {
			return "", SourceDMI, err
		}
		if found && !dmiPlaceholders[strings.ToLower(v)] {
			id, err := Normalize(SourceDMI, v)
			return id, SourceDMI, err
		}
	}
	if try(SourceMAC) {
		mac, err := firstMAC(filepath.Join(root, "sys/class/net"))
		if err != nil {
			return "", SourceMAC, err
		}
		if mac != "" {
			id, err := Normalize(SourceMAC, mac)
			return id, SourceMAC, err
		}
	}
	if src != SourceAuto {
		return "", src, fmt.Errorf("device_id_source is %s, and the board has no %s serial", src, src)
	}
	return "", "", ErrNoID
}

// readValue reads a small sysfs/devicetree file, trimming whitespace and
// the NUL terminator devicetree strings carry. found is false when the
// file does not exist; a file that exists but cannot be read is an error.
func readValue(path string) (v string, found bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", true, fmt.Errorf("device ID: %w (run as a user that can read it, or set device_id_source)", err)
	}
	return strings.TrimSpace(strings.Trim(string(b), "\x00")), true, nil
}

// firstMAC returns the address of the first interface, in sorted name
// order, that is not loopback and has a non-zero MAC.
func firstMAC(dir string) (string, error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("device ID: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		if n == "lo" {
			continue
		}
		v, found, err := readValue(filepath.Join(dir, n, "address"))
		if err != nil {
			return "", err
		}
		if !found || v == "" || strings.Trim(v, "0:") == "" {
			continue
		}
		return v, nil
	}
	return "", nil
}

// Normalize trims and lowercases v and checks it against the DPS
// registration ID rules. The error names src and the original value.
func Normalize(src Source, v string) (string, error) {
	id := strings.ToLower(strings.TrimSpace(strings.Trim(v, "\x00")))
	if reason := idProblem(id); reason != "" {
		return "", &IDError{Source: src, Value: v, Reason: reason}
	}
	return id, nil
}

// Validate checks an already-normalised ID (for example one read from a
// CSR) against the DPS registration ID rules, without changing it.
func Validate(id string) error {
	if reason := idProblem(id); reason != "" {
		return &IDError{Source: "value", Value: id, Reason: reason}
	}
	return nil
}

func idProblem(id string) string {
	if id == "" {
		return "empty"
	}
	if len(id) > MaxIDLen {
		return fmt.Sprintf("%d characters, more than %d", len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == ':' {
			continue
		}
		return fmt.Sprintf("character %q at offset %d is not allowed (lowercase letters, digits and - . _ : only)", c, i)
	}
	return ""
}

// Fake is an Identity that returns fixed values, for tests of code that
// consumes a device ID.
type Fake struct {
	ID     string
	Source Source
	Err    error
}

var _ Identity = Fake{}

// DeviceID returns the fixed values.
func (f Fake) DeviceID() (string, Source, error) { return f.ID, f.Source, f.Err }
