package serial_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/hal/serial"
)

// usbTree is a fake /sys and /dev: ttys whose device directories sit
// where the kernel puts them, below a USB device with idVendor and serial.
type usbTree struct {
	t        *testing.T
	sys, dev string
}

func newUSBTree(t *testing.T) *usbTree {
	root := t.TempDir()
	u := &usbTree{t: t, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	for _, d := range []string{"class/tty", "devices/platform/serial8250"} {
		u.mkdir(filepath.Join(u.sys, d))
	}
	u.mkdir(u.dev)
	return u
}

func (u *usbTree) mkdir(p string) {
	if err := os.MkdirAll(p, 0o755); err != nil {
		u.t.Fatal(err)
	}
}

func (u *usbTree) write(p, s string) {
	u.mkdir(filepath.Dir(p))
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		u.t.Fatal(err)
	}
}

// tty adds /sys/class/tty/NAME with its device link to devRel (under
// sys/devices) and /dev/NAME.
func (u *usbTree) tty(name, devRel string) {
	d := filepath.Join(u.sys, "devices", devRel)
	u.mkdir(d)
	u.mkdir(filepath.Join(u.sys, "class/tty", name))
	if err := os.Symlink(d, filepath.Join(u.sys, "class/tty", name, "device")); err != nil {
		u.t.Fatal(err)
	}
	u.write(filepath.Join(u.dev, name), "")
}

// usbDevice adds a USB device (idVendor, and serial unless "").
func (u *usbTree) usbDevice(rel, serialNo string) {
	d := filepath.Join(u.sys, "devices", rel)
	u.write(filepath.Join(d, "idVendor"), "1d6b\n")
	if serialNo != "" {
		u.write(filepath.Join(d, "serial"), serialNo+"\n")
	}
}

func (u *usbTree) resolver() serial.USBResolver { return serial.USBResolver{Dev: u.dev, Sys: u.sys} }

const xhci = "pci0000:00/0000:00:01.0/usb1"

func TestResolveUSBSysfs(t *testing.T) {
	t.Parallel()
	u := newUSBTree(t)
	u.usbDevice(xhci+"/1-1", "board-0001")
	u.tty("ttyACM0", xhci+"/1-1/1-1:1.0") // cdc_acm: the interface
	u.usbDevice(xhci+"/1-2", "FT4Z3XQ1")
	u.tty("ttyUSB0", xhci+"/1-2/1-2:1.0/ttyUSB0") // usb-serial: a port below the interface
	u.usbDevice(xhci+"/1-3", "")
	u.tty("ttyUSB1", xhci+"/1-3/1-3:1.0/ttyUSB1") // an adapter without a serial number
	u.tty("ttyS0", "platform/serial8250")
	u.mkdir(filepath.Join(u.sys, "class/tty/tty0")) // virtual: no device link
	r := u.resolver()
	for pattern, want := range map[string]string{"board-0001": "ttyACM0", "FT4Z3XQ1": "ttyUSB0", "board-*": "ttyACM0"} {
		got, err := r.Resolve(pattern)
		if err != nil || got != filepath.Join(u.dev, want) {
			t.Errorf("Resolve(%q) = %q, %v; want %s", pattern, got, err, want)
		}
	}
	if _, err := r.Resolve("board-0002"); !errors.Is(err, serial.ErrNoUSBPort) {
		t.Errorf("Resolve of an absent board: %v, want ErrNoUSBPort", err)
	}
	if _, err := r.Resolve("*"); err == nil || !strings.Contains(err.Error(), "matches 2 serial ports") {
		t.Errorf("Resolve(*): %v", err)
	}
	if _, err := r.Resolve("["); err == nil {
		t.Error("a bad glob was accepted")
	}

	// The board resets and comes back as ttyACM1: the same serial
	// resolves to the new node.
	if err := os.RemoveAll(filepath.Join(u.sys, "class/tty/ttyACM0")); err != nil {
		t.Fatal(err)
	}
	u.tty("ttyACM1", xhci+"/1-1/1-1:1.0")
	if got, err := r.Resolve("board-0001"); err != nil || got != filepath.Join(u.dev, "ttyACM1") {
		t.Errorf("after re-enumeration: %q, %v", got, err)
	}
}

func TestResolveUSBByID(t *testing.T) {
	t.Parallel()
	u := newUSBTree(t)
	byID := filepath.Join(u.dev, "serial/by-id")
	u.mkdir(byID)
	link := func(name, tty string) {
		u.write(filepath.Join(u.dev, tty), "")
		if err := os.Symlink("../../"+tty, filepath.Join(byID, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("usb-devid_devid_factory_port_board-0001-if00", "ttyACM3")
	for i, tty := range []string{"ttyUSB4", "ttyUSB5"} {
		link("usb-FTDI_Quad_RS232-HS_FT4Z3XQ1-if0"+string(rune('0'+i))+"-port0", tty)
	}
	r := u.resolver()
	if got, err := r.Resolve("board-0001"); err != nil || got != filepath.Join(u.dev, "ttyACM3") {
		t.Errorf("Resolve(board-0001) = %q, %v", got, err)
	}
	if _, err := r.Resolve("FT4Z3XQ1"); err == nil || !strings.Contains(err.Error(), "matches 2 serial ports") {
		t.Errorf("a four-port adapter by its serial: %v", err)
	}
	// Not in by-id (a stale udev, or no rule ran yet): sysfs still knows it.
	u.usbDevice(xhci+"/1-1", "board-0002")
	u.tty("ttyACM0", xhci+"/1-1/1-1:1.0")
	if got, err := r.Resolve("board-0002"); err != nil || got != filepath.Join(u.dev, "ttyACM0") {
		t.Errorf("Resolve(board-0002) = %q, %v", got, err)
	}
}

func FuzzResolveUSB(f *testing.F) {
	for _, s := range []string{"board-0001", "*", "[", "a_b", "usb-x_y-if00", ""} {
		f.Add(s)
	}
	root := f.TempDir()
	byID := filepath.Join(root, "dev/serial/by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		f.Fatal(err)
	}
	for _, n := range []string{"usb-a_b_board-0001-if00", "usb-if00", "usb-_-if", "usb-x-if00-port0"} {
		_ = os.Symlink("../../ttyX", filepath.Join(byID, n))
	}
	r := serial.USBResolver{Dev: filepath.Join(root, "dev"), Sys: filepath.Join(root, "sys")}
	f.Fuzz(func(t *testing.T, pattern string) {
		p, err := r.Resolve(pattern)
		if err == nil && p == "" {
			t.Fatalf("Resolve(%q): no path and no error", pattern)
		}
	})
}
