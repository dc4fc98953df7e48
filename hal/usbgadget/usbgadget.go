// Package usbgadget makes the board's factory port a USB serial device: a
// configfs gadget with one CDC-ACM function, so that a board whose only
// link to the jig is its USB device port (OTG) shows up on the jig as
// /dev/ttyACM* and to the agent as /dev/ttyGS*.
//
// Create builds the gadget under <configfs>/usb_gadget/<name> in the order
// of the kernel's gadget_configfs documentation, with the device ID as the
// USB serial number (so the jig finds the board by it, docs/factory-usb.md),
// and binds it to a USB device controller (UDC). Close undoes exactly what
// Create did, in reverse: unbind, unlink the function, rmdir.
//
// A gadget carries an ownership marker (its configuration string, Marker).
// Create refuses to touch a same-named gadget without it, and replaces one
// with it: that is a gadget an agent made and could not remove (killed).
//
// Every path is under roots that tests move to a temporary directory; FS is
// the seam, and usbgadget/gadgettest's fake behaves as configfs does
// (attributes made by the kernel, rmdir of a directory that still holds
// attributes).
package usbgadget

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Defaults of a gadget.
const (
	// DefaultName is the gadget's directory under usb_gadget.
	DefaultName = "devid"
	// DefaultVendorID and DefaultProductID are the Linux Foundation's
	// "Multifunction Composite Gadget" ID, which Linux hosts bind to
	// cdc_acm by the ACM interface's class.
	DefaultVendorID  = 0x1d6b
	DefaultProductID = 0x0104
	// DefaultManufacturer and DefaultProduct are the USB strings when the
	// config gives none.
	DefaultManufacturer = "devid"
	DefaultProduct      = "devid factory port"
	// Marker is the configuration string of every gadget this package
	// makes: the sign that a gadget is ours to remove.
	Marker = "devid factory serial (CDC ACM)"
)

// Default roots.
const (
	DefaultConfigFS = "/sys/kernel/config"
	DefaultUDCClass = "/sys/class/udc"
	DefaultDev      = "/dev"
	DefaultMounts   = "/proc/self/mounts"
)

// The missing pieces Create names, for errors.Is.
var (
	ErrNoConfigFS     = errors.New("configfs is not mounted")
	ErrNoLibcomposite = errors.New("the USB gadget framework (libcomposite) is not loaded")
	ErrNoUDC          = errors.New("no USB device controller (UDC)")
	ErrNoACM          = errors.New("the CDC ACM gadget function (usb_f_acm) is not available")
	ErrNotOurs        = errors.New("a gadget of that name exists that devid did not make")
)

// Config is the gadget to make.
type Config struct {
	// Name is the directory under usb_gadget (default DefaultName).
	Name string
	// VendorID and ProductID (0: the defaults).
	VendorID, ProductID uint16
	// SerialNumber is the device ID: the jig finds the board by it.
	SerialNumber string
	// Manufacturer and Product are the USB strings ("": the defaults).
	Manufacturer, Product string
	// UDC names the device controller ("": the first in /sys/class/udc).
	UDC string
}

// System is where the gadget is made. Zero fields take the defaults.
type System struct {
	FS       FS     // nil: the real filesystem (OS)
	ConfigFS string // configfs mount point
	UDCClass string // /sys/class/udc
	Dev      string // where /dev/ttyGS<N> appears
	Mounts   string // the mount table, to tell "not mounted" from "not loaded"
}

// FS is what a gadget needs of the filesystem. Remove is unlink for a
// link and rmdir for a directory.
type FS interface {
	Mkdir(path string) error
	WriteFile(path, value string) error
	ReadFile(path string) (string, error)
	ReadDir(path string) ([]string, error)
	Symlink(target, link string) error
	Remove(path string) error
	Stat(path string) (fs.FileInfo, error)
}

// OS is FS on the real filesystem.
type OS struct{}

func (OS) Mkdir(p string) error { return os.Mkdir(p, 0o755) }

// WriteFile writes value to an existing attribute in one write, as echo
// does (configfs takes one store per write).
func (OS) WriteFile(p, value string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (OS) ReadFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func (OS) ReadDir(p string) ([]string, error) {
	es, err := os.ReadDir(p)
	names := make([]string, 0, len(es))
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (OS) Symlink(target, link string) error  { return os.Symlink(target, link) }
func (OS) Remove(p string) error              { return os.Remove(p) }
func (OS) Stat(p string) (fs.FileInfo, error) { return os.Stat(p) }

func (s System) withDefaults() System {
	if s.FS == nil {
		s.FS = OS{}
	}
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&s.ConfigFS, DefaultConfigFS)
	def(&s.UDCClass, DefaultUDCClass)
	def(&s.Dev, DefaultDev)
	def(&s.Mounts, DefaultMounts)
	return s
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.VendorID == 0 {
		c.VendorID = DefaultVendorID
	}
	if c.ProductID == 0 {
		c.ProductID = DefaultProductID
	}
	if c.Manufacturer == "" {
		c.Manufacturer = DefaultManufacturer
	}
	if c.Product == "" {
		c.Product = DefaultProduct
	}
	return c
}

// CheckString refuses what cannot be a USB string descriptor: empty, over
// 126 characters (a descriptor holds 255 bytes of UTF-16), not UTF-8, or
// with a control character (configfs would keep a newline in it).
func CheckString(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("USB %s is empty", what)
	case !utf8.ValidString(s):
		return fmt.Errorf("USB %s %q is not UTF-8", what, s)
	case utf8.RuneCountInString(s) > 126:
		return fmt.Errorf("USB %s is %d characters long: a USB string holds at most 126", what, utf8.RuneCountInString(s))
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || r > 0xffff }):
		return fmt.Errorf("USB %s %q holds a control character or a character outside the BMP", what, s)
	}
	return nil
}

// ParseID parses "VVVV:PPPP" (hexadecimal, as lsusb prints it).
func ParseID(s string) (vendor, product uint16, err error) {
	v, p, ok := strings.Cut(s, ":")
	if ok {
		var vv, pp uint64
		vv, err = strconv.ParseUint(v, 16, 16)
		if err == nil {
			pp, err = strconv.ParseUint(p, 16, 16)
		}
		if err == nil && len(v) == 4 && len(p) == 4 {
			return uint16(vv), uint16(pp), nil
		}
	}
	return 0, 0, fmt.Errorf("USB ID %q: want VVVV:PPPP in hexadecimal, as lsusb prints it (e.g. 1d6b:0104)", s)
}

// Gadget is a gadget this package made and will remove.
type Gadget struct {
	sys  System
	dir  string
	udc  string
	tty  string
	undo []step // what Create did, in order
	// Replaced is set when Create removed a leftover gadget of ours first.
	Replaced bool
}

// step is one thing Create did and Close undoes.
type step struct {
	op   string // "mkdir", "link", "bind"
	path string
}

// Dir is the gadget's configfs directory.
func (g *Gadget) Dir() string { return g.dir }

// UDC is the device controller the gadget is bound to.
func (g *Gadget) UDC() string { return g.udc }

// TTY is the gadget side of the serial line: /dev/ttyGS<port_num>.
func (g *Gadget) TTY() string { return g.tty }

// Create makes the gadget on the real system.
func Create(c Config) (*Gadget, error) { return System{}.Create(c) }

// Create makes and binds the gadget. On any error it removes what it made.
func (s System) Create(c Config) (*Gadget, error) {
	s, c = s.withDefaults(), c.withDefaults()
	if strings.ContainsAny(c.Name, "/\x00") || c.Name == "." || c.Name == ".." {
		return nil, fmt.Errorf("USB gadget name %q: want one directory name", c.Name)
	}
	for _, f := range []struct{ what, v string }{
		{"serial number (the device ID)", c.SerialNumber}, {"manufacturer", c.Manufacturer}, {"product", c.Product},
	} {
		if err := CheckString(f.what, f.v); err != nil {
			return nil, err
		}
	}
	base, err := s.gadgetRoot()
	if err != nil {
		return nil, err
	}
	udc, err := s.pickUDC(c.UDC)
	if err != nil {
		return nil, err
	}
	g := &Gadget{sys: s, dir: filepath.Join(base, c.Name), udc: udc}
	if _, err := s.FS.Stat(g.dir); err == nil {
		if err := s.removeLeftover(g.dir); err != nil {
			return nil, err
		}
		g.Replaced = true
	}
	if err := g.build(c); err != nil {
		if uerr := g.Close(); uerr != nil {
			err = fmt.Errorf("%w; removing the half-made gadget: %v", err, uerr)
		}
		return nil, err
	}
	return g, nil
}

// gadgetRoot finds <configfs>/usb_gadget, or says what is missing.
func (s System) gadgetRoot() (string, error) {
	base := filepath.Join(s.ConfigFS, "usb_gadget")
	if _, err := s.FS.Stat(base); err == nil {
		return base, nil
	}
	if !s.mounted() {
		return "", fmt.Errorf("%w on %s: mount -t configfs none %s (kernel CONFIG_CONFIGFS_FS)", ErrNoConfigFS, s.ConfigFS, s.ConfigFS)
	}
	return "", fmt.Errorf("%w: %s does not exist: modprobe libcomposite (kernel CONFIG_USB_LIBCOMPOSITE, CONFIG_USB_CONFIGFS)", ErrNoLibcomposite, base)
}

// mounted says whether the mount table has configfs on s.ConfigFS. An
// unreadable table counts as mounted: the libcomposite hint is then the
// likelier one.
func (s System) mounted() bool {
	t, err := s.FS.ReadFile(s.Mounts)
	if err != nil {
		return true
	}
	for _, line := range strings.Split(t, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "configfs" && filepath.Clean(f[1]) == filepath.Clean(s.ConfigFS) {
			return true
		}
	}
	return false
}

// pickUDC returns the named controller, or the first one.
func (s System) pickUDC(name string) (string, error) {
	udcs, err := s.FS.ReadDir(s.UDCClass)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("list USB device controllers: %w", err)
	}
	slices.Sort(udcs)
	if len(udcs) == 0 {
		return "", fmt.Errorf("%w in %s: load the board's UDC driver (dwc2, dwc3, musb, chipidea; the port in peripheral or otg mode in the devicetree), or modprobe dummy_hcd to try it without hardware", ErrNoUDC, s.UDCClass)
	}
	if name == "" {
		return udcs[0], nil
	}
	if !slices.Contains(udcs, name) {
		return "", fmt.Errorf("%w named %q in %s; there are: %s", ErrNoUDC, name, s.UDCClass, strings.Join(udcs, ", "))
	}
	return name, nil
}

// Paths inside a gadget directory.
const (
	stringsDir  = "strings/0x409" // US English
	configDir   = "configs/c.1"
	configStr   = "configs/c.1/strings/0x409"
	functionDir = "functions/acm.usb0"
	functionLnk = "configs/c.1/acm.usb0"
)

// build makes the gadget, recording each step for Close. The marker goes
// in first, so that a gadget left half-made by a killed agent is still
// recognised as ours.
func (g *Gadget) build(c Config) error {
	fsys := g.sys.FS
	p := func(rel string) string { return filepath.Join(g.dir, rel) }
	mkdir := func(rel string) error {
		if err := fsys.Mkdir(p(rel)); err != nil {
			return fmt.Errorf("make USB gadget: %w", err)
		}
		g.undo = append(g.undo, step{"mkdir", p(rel)})
		return nil
	}
	write := func(rel, v string) error {
		if err := fsys.WriteFile(p(rel), v); err != nil {
			return fmt.Errorf("USB gadget %s: %w", rel, err)
		}
		return nil
	}
	if err := mkdir(""); err != nil {
		return err
	}
	for _, do := range []func() error{
		func() error { return mkdir(configDir) },
		func() error { return mkdir(configStr) },
		func() error { return write(configStr+"/configuration", Marker) },
		func() error { return write("idVendor", fmt.Sprintf("0x%04x", c.VendorID)) },
		func() error { return write("idProduct", fmt.Sprintf("0x%04x", c.ProductID)) },
		func() error { return mkdir(stringsDir) },
		func() error { return write(stringsDir+"/serialnumber", c.SerialNumber) },
		func() error { return write(stringsDir+"/manufacturer", c.Manufacturer) },
		func() error { return write(stringsDir+"/product", c.Product) },
	} {
		if err := do(); err != nil {
			return err
		}
	}
	if err := fsys.Mkdir(p(functionDir)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: mkdir %s: %v: modprobe usb_f_acm (kernel CONFIG_USB_CONFIGFS_ACM)", ErrNoACM, p(functionDir), err)
		}
		return fmt.Errorf("make USB gadget: %w", err)
	}
	g.undo = append(g.undo, step{"mkdir", p(functionDir)})
	if err := fsys.Symlink(p(functionDir), p(functionLnk)); err != nil {
		return fmt.Errorf("USB gadget: link the ACM function into %s: %w", configDir, err)
	}
	g.undo = append(g.undo, step{"link", p(functionLnk)})
	n, err := fsys.ReadFile(p(functionDir + "/port_num"))
	if err != nil {
		return fmt.Errorf("USB gadget: the ACM function's port number: %w", err)
	}
	num, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || num < 0 {
		return fmt.Errorf("USB gadget: %s/port_num is %q, not a port number", functionDir, n)
	}
	g.tty = filepath.Join(g.sys.Dev, "ttyGS"+strconv.Itoa(num))
	if err := write("UDC", g.udc); err != nil {
		if errors.Is(err, fs.ErrExist) || strings.Contains(err.Error(), "busy") {
			err = fmt.Errorf("%w (another gadget may hold %s: grep . %s/usb_gadget/*/UDC)", err, g.udc, g.sys.ConfigFS)
		}
		return fmt.Errorf("bind to %s: %w", g.udc, err)
	}
	g.undo = append(g.undo, step{"bind", p("UDC")})
	if _, err := fsys.Stat(g.tty); err != nil {
		return fmt.Errorf("USB gadget: the ACM function's tty: %w", err)
	}
	return nil
}

// Close unbinds the gadget and removes what Create made, in reverse
// order. Close the tty first: the kernel waits for it to be closed before
// it removes the function. It goes on past a failed step and returns
// every error; a second Close does nothing.
func (g *Gadget) Close() error {
	var errs []error
	for i := len(g.undo) - 1; i >= 0; i-- {
		s := g.undo[i]
		var err error
		switch s.op {
		case "bind":
			// Already unbound (by hand, or the UDC went away): unbinding
			// again is ENODEV.
			if u, rerr := g.sys.FS.ReadFile(s.path); rerr == nil && strings.TrimSpace(u) == "" {
				continue
			}
			// "\n", as echo writes: an empty write may not reach configfs.
			err = g.sys.FS.WriteFile(s.path, "\n")
		default:
			err = g.sys.FS.Remove(s.path)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove USB gadget: %s %s: %w", s.op, s.path, err))
		}
	}
	g.undo = nil
	return errors.Join(errs...)
}

// removeLeftover removes a gadget at dir made by an earlier agent that
// could not remove it, or refuses if the gadget is not ours.
func (s System) removeLeftover(dir string) error {
	mark, err := s.FS.ReadFile(filepath.Join(dir, configStr, "configuration"))
	if err != nil || strings.TrimSpace(mark) != Marker {
		return fmt.Errorf("%w: %s (its configuration string is not %q): devid leaves it alone; remove it or free the name", ErrNotOurs, dir, Marker)
	}
	g := &Gadget{sys: s, dir: dir}
	// The steps build would have recorded, for those parts that exist.
	for _, st := range []step{
		{"mkdir", ""}, {"mkdir", configDir}, {"mkdir", configStr}, {"mkdir", stringsDir},
		{"mkdir", functionDir}, {"link", functionLnk}, {"bind", "UDC"},
	} {
		p := filepath.Join(dir, st.path)
		if st.op == "bind" {
			if u, err := s.FS.ReadFile(p); err != nil || strings.TrimSpace(u) == "" {
				continue
			}
		} else if _, err := s.FS.Stat(p); err != nil {
			continue
		}
		g.undo = append(g.undo, step{st.op, p})
	}
	if err := g.Close(); err != nil {
		return fmt.Errorf("remove the leftover devid gadget %s: %w", dir, err)
	}
	return nil
}
