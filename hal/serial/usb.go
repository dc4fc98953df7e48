package serial

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// USBPrefix marks a port named by the USB serial number of the device
// behind it: "usb:SERIAL". A board's USB gadget carries its device ID
// there (docs/factory-usb.md); an adapter carries its own serial.
const USBPrefix = "usb:"

// IsUSB says whether port names a USB serial number.
func IsUSB(port string) bool { return strings.HasPrefix(port, USBPrefix) }

// USBResolver finds the tty of a USB device by its serial number, first
// through udev's /dev/serial/by-id links, else through sysfs (a system
// without udev). The roots are "/dev" and "/sys" unless set; tests point
// them at fake trees.
type USBResolver struct {
	Dev, Sys string
}

func (r USBResolver) roots() (dev, sys string) {
	dev, sys = r.Dev, r.Sys
	if dev == "" {
		dev = "/dev"
	}
	if sys == "" {
		sys = "/sys"
	}
	return dev, sys
}

// ErrNoUSBPort means no tty has the serial number: the board is not
// plugged in (or not yet enumerated).
var ErrNoUSBPort = errors.New("no USB serial port with that serial number")

// Resolve returns the tty path of the USB device whose serial number
// matches pattern (a serial number, or a path.Match glob on it). No match
// is ErrNoUSBPort; more than one tty is an error naming them.
func (r USBResolver) Resolve(pattern string) (string, error) {
	if pattern == "" {
		return "", errors.New("usb: port without a serial number (want usb:SERIAL)")
	}
	if _, err := filepath.Match(pattern, ""); err != nil {
		return "", fmt.Errorf("usb:%s: %w", pattern, err)
	}
	ttys, err := r.byID(pattern)
	if err == nil && len(ttys) == 0 {
		ttys, err = r.bySysfs(pattern)
	}
	switch {
	case err != nil:
		return "", err
	case len(ttys) == 0:
		return "", fmt.Errorf("usb:%s: %w", pattern, ErrNoUSBPort)
	case len(ttys) > 1:
		return "", fmt.Errorf("usb:%s matches %d serial ports (%s): give one by its /dev/serial/by-id or by-path name", pattern, len(ttys), strings.Join(ttys, ", "))
	}
	return ttys[0], nil
}

// byID reads udev's links: usb-<vendor>_<model>_<serial>-if<NN>[-port<M>].
// The serial is what follows the last "_" (udev makes spaces in vendor
// and model "_"; a device ID never holds one).
func (r USBResolver) byID(pattern string) ([]string, error) {
	dev, _ := r.roots()
	dir := filepath.Join(dev, "serial", "by-id")
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil // no udev, or nothing plugged: sysfs decides
	}
	var ttys []string
	for _, e := range es {
		name := e.Name()
		i := strings.LastIndex(name, "-if")
		if !strings.HasPrefix(name, "usb-") || i < 0 {
			continue
		}
		head := name[:i]
		serial := head[strings.LastIndex(head, "_")+1:]
		if ok, _ := filepath.Match(pattern, serial); !ok {
			continue
		}
		target, err := filepath.EvalSymlinks(filepath.Join(dir, name))
		if err == nil && !slices.Contains(ttys, target) {
			ttys = append(ttys, target)
		}
	}
	slices.Sort(ttys)
	return ttys, nil
}

// bySysfs walks /sys/class/tty/*/device up to the USB device (the
// directory with idVendor) and compares its serial file.
func (r USBResolver) bySysfs(pattern string) ([]string, error) {
	dev, sys := r.roots()
	if real, err := filepath.EvalSymlinks(sys); err == nil {
		sys = real
	}
	class := filepath.Join(sys, "class", "tty")
	es, err := os.ReadDir(class)
	if err != nil {
		return nil, fmt.Errorf("usb:%s: list serial ports: %w", pattern, err)
	}
	var ttys []string
	for _, e := range es {
		d, err := filepath.EvalSymlinks(filepath.Join(class, e.Name(), "device"))
		if err != nil {
			continue // a virtual tty, no device behind it
		}
		s, ok := usbSerial(d, sys)
		if !ok {
			continue
		}
		if m, _ := filepath.Match(pattern, s); m {
			ttys = append(ttys, filepath.Join(dev, e.Name()))
		}
	}
	slices.Sort(ttys)
	return ttys, nil
}

// usbSerial walks up from a tty's device directory to the USB device (an
// interface's or a usb-serial port's parent, at most a few levels up) and
// reads its serial number.
func usbSerial(dir, sys string) (string, bool) {
	for range 4 {
		if _, err := os.Stat(filepath.Join(dir, "idVendor")); err == nil {
			b, err := os.ReadFile(filepath.Join(dir, "serial"))
			if err != nil {
				return "", false // a USB device without a serial number
			}
			return strings.TrimSpace(string(b)), true
		}
		parent := filepath.Dir(dir)
		if parent == dir || !strings.HasPrefix(parent, sys) {
			return "", false
		}
		dir = parent
	}
	return "", false
}
