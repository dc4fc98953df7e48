// Package board reads the board's identity: the device ID that becomes the
// certificate CN and the DPS registration ID.
//
// Sources are tried in this documented order; the first one that yields a
// value wins:
//
//  1. the configured value (config device_id or --device-id);
//  2. the devicetree serial number: /proc/device-tree/serial-number, then
//     /sys/firmware/devicetree/base/serial-number;
//  3. the DMI product serial: /sys/class/dmi/id/product_serial;
//  4. the first non-loopback, non-zero MAC address from
//     /sys/class/net/*/address, interfaces taken in sorted name order.
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
	"os"
	"path/filepath"
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
)

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
	// Configured, when non-empty, wins over every board source.
	Configured string
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
	if r.Configured != "" {
		id, err := Normalize(SourceConfig, r.Configured)
		return id, SourceConfig, err
	}
	root := r.Root
	if root == "" {
		root = "/"
	}
	for _, p := range []string{"proc/device-tree/serial-number", "sys/firmware/devicetree/base/serial-number"} {
		if v, ok := readValue(filepath.Join(root, p)); ok && v != "" {
			id, err := Normalize(SourceDevicetree, v)
			return id, SourceDevicetree, err
		}
	}
	if v, ok := readValue(filepath.Join(root, "sys/class/dmi/id/product_serial")); ok && !dmiPlaceholders[strings.ToLower(v)] {
		id, err := Normalize(SourceDMI, v)
		return id, SourceDMI, err
	}
	if mac := firstMAC(filepath.Join(root, "sys/class/net")); mac != "" {
		id, err := Normalize(SourceMAC, mac)
		return id, SourceMAC, err
	}
	return "", "", ErrNoID
}

// readValue reads a small sysfs/devicetree file, trimming whitespace and
// the NUL terminator devicetree strings carry. ok is false when the file
// cannot be read (absent, or not readable by this user).
func readValue(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(strings.Trim(string(b), "\x00")), true
}

// firstMAC returns the address of the first interface, in sorted name
// order, that is not loopback and has a non-zero MAC.
func firstMAC(dir string) string {
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return ""
	}
	for _, e := range ents {
		n := e.Name()
		if n == "lo" {
			continue
		}
		v, ok := readValue(filepath.Join(dir, n, "address"))
		if !ok || v == "" || strings.Trim(v, "0:") == "" {
			continue
		}
		return v
	}
	return ""
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
