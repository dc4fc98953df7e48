package usbgadget_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"devid/hal/usbgadget"
	"devid/hal/usbgadget/gadgettest"
)

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCreateAndClose checks every change Create makes, what the kernel
// would then see, and that Close undoes it in reverse order.
func TestCreateAndClose(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "dummy_udc.0", "fe980000.usb")
	g, err := f.System().Create(usbgadget.Config{SerialNumber: "board-0042", Manufacturer: "Acme", Product: "Widget"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mkdir config/usb_gadget/devid",
		"mkdir config/usb_gadget/devid/configs/c.1",
		"mkdir config/usb_gadget/devid/configs/c.1/strings/0x409",
		"write config/usb_gadget/devid/configs/c.1/strings/0x409/configuration " + usbgadget.Marker,
		"write config/usb_gadget/devid/idVendor 0x1d6b",
		"write config/usb_gadget/devid/idProduct 0x0104",
		"mkdir config/usb_gadget/devid/strings/0x409",
		"write config/usb_gadget/devid/strings/0x409/serialnumber board-0042",
		"write config/usb_gadget/devid/strings/0x409/manufacturer Acme",
		"write config/usb_gadget/devid/strings/0x409/product Widget",
		"mkdir config/usb_gadget/devid/functions/acm.usb0",
		"symlink config/usb_gadget/devid/functions/acm.usb0 config/usb_gadget/devid/configs/c.1/acm.usb0",
		"write config/usb_gadget/devid/UDC dummy_udc.0", // the first in sorted order
	}
	if got := f.Ops(); !slices.Equal(got, want) {
		t.Fatalf("Create did:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	dir := filepath.Join(f.Root, "config/usb_gadget/devid")
	if g.Dir() != dir || g.UDC() != "dummy_udc.0" || g.TTY() != filepath.Join(f.Root, "dev/ttyGS0") || g.Replaced {
		t.Fatalf("gadget dir %s udc %s tty %s replaced %v", g.Dir(), g.UDC(), g.TTY(), g.Replaced)
	}
	if s := read(t, filepath.Join(dir, "strings/0x409/serialnumber")); s != "board-0042" {
		t.Fatalf("serialnumber %q", s)
	}
	if _, err := os.Stat(g.TTY()); err != nil {
		t.Fatal(err)
	}

	n := len(f.Ops())
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	wantClose := []string{
		"write config/usb_gadget/devid/UDC ",
		"remove config/usb_gadget/devid/configs/c.1/acm.usb0",
		"remove config/usb_gadget/devid/functions/acm.usb0",
		"remove config/usb_gadget/devid/strings/0x409",
		"remove config/usb_gadget/devid/configs/c.1/strings/0x409",
		"remove config/usb_gadget/devid/configs/c.1",
		"remove config/usb_gadget/devid",
	}
	if got := f.Ops()[n:]; !slices.Equal(got, wantClose) {
		t.Fatalf("Close did:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(wantClose, "\n  "))
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("gadget dir after Close: %v", err)
	}
	if _, err := os.Lstat(g.TTY()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tty after Close: %v", err)
	}
	if err := g.Close(); err != nil || len(f.Ops()) != n+len(wantClose) {
		t.Fatalf("a second Close: %v, %d more changes", err, len(f.Ops())-n-len(wantClose))
	}
}

func TestCreateOptions(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "a.udc", "b.udc")
	if err := os.WriteFile(filepath.Join(f.Root, "dev/ttyGS0"), nil, 0o600); err != nil {
		t.Fatal(err) // another function holds port 0
	}
	g, err := f.System().Create(usbgadget.Config{Name: "factory", VendorID: 0x1234, ProductID: 0xabcd,
		SerialNumber: "x", UDC: "b.udc"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	dir := filepath.Join(f.Root, "config/usb_gadget/factory")
	for file, want := range map[string]string{"idVendor": "0x1234", "idProduct": "0xabcd", "UDC": "b.udc",
		"strings/0x409/manufacturer": usbgadget.DefaultManufacturer, "strings/0x409/product": usbgadget.DefaultProduct} {
		if got := read(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if g.TTY() != filepath.Join(f.Root, "dev/ttyGS1") {
		t.Fatalf("tty %s, want ttyGS1 (port_num 1)", g.TTY())
	}
}

// TestMissing: each missing piece is named, with how to get it, and
// nothing is left behind.
func TestMissing(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(*gadgettest.Fake) error
		udcs  []string
		cfg   usbgadget.Config
		is    error
		hint  string
	}{
		{"configfs", (*gadgettest.Fake).Unmount, []string{"u"}, usbgadget.Config{}, usbgadget.ErrNoConfigFS, "mount -t configfs none "},
		{"libcomposite", (*gadgettest.Fake).Unload, []string{"u"}, usbgadget.Config{}, usbgadget.ErrNoLibcomposite, "modprobe libcomposite"},
		{"udc", nil, nil, usbgadget.Config{}, usbgadget.ErrNoUDC, "dummy_hcd"},
		{"named udc", nil, []string{"u"}, usbgadget.Config{UDC: "v"}, usbgadget.ErrNoUDC, "there are: u"},
		{"acm", func(f *gadgettest.Fake) error { f.NoACM = true; return nil }, []string{"u"}, usbgadget.Config{}, usbgadget.ErrNoACM, "modprobe usb_f_acm"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := gadgettest.New(t, c.udcs...)
			if c.setup != nil {
				if err := c.setup(f); err != nil {
					t.Fatal(err)
				}
			}
			c.cfg.SerialNumber = "board-1"
			_, err := f.System().Create(c.cfg)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.hint) {
				t.Fatalf("err = %v; want %v with %q", err, c.is, c.hint)
			}
			if left, _ := filepath.Glob(filepath.Join(f.Root, "config/usb_gadget/*")); len(left) > 0 {
				t.Fatalf("left behind: %v (changes: %q)", left, f.Ops())
			}
		})
	}
}

// TestBindFailsUndone: a failure at the last step removes everything.
func TestBindFailsUndone(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "u")
	// The UDC vanishes between the listing and the bind (a driver unloaded).
	sys := f.System()
	sys.FS = removeUDCBeforeBind{f}
	_, err := sys.Create(usbgadget.Config{SerialNumber: "board-1"})
	if err == nil || !strings.Contains(err.Error(), "bind to u") {
		t.Fatalf("err = %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(f.Root, "config/usb_gadget/*")); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

type removeUDCBeforeBind struct{ *gadgettest.Fake }

func (r removeUDCBeforeBind) WriteFile(p, v string) error {
	if filepath.Base(p) == "UDC" && v == "u" {
		_ = os.Remove(filepath.Join(r.Root, "udc", "u"))
	}
	return r.Fake.WriteFile(p, v)
}

// TestCloseAfterUnbind: a gadget someone unbound (a cable pull simulated
// by hand) is still removed, without unbinding it again.
func TestCloseAfterUnbind(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "u")
	g, err := f.System().Create(usbgadget.Config{SerialNumber: "board-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(filepath.Join(g.Dir(), "UDC"), "\n"); err != nil {
		t.Fatal(err)
	}
	n := len(f.Ops())
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if got := f.Ops()[n:]; len(got) != 6 || got[0] != "remove config/usb_gadget/devid/configs/c.1/acm.usb0" {
		t.Fatalf("Close of an unbound gadget did:\n  %s", strings.Join(got, "\n  "))
	}
}

// TestNotOurs: a same-named gadget without the marker is left alone.
func TestNotOurs(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "u")
	dir := filepath.Join(f.Root, "config/usb_gadget/devid")
	if err := f.Mkdir(dir); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(filepath.Join(dir, "UDC"), "u"); err != nil {
		t.Fatal(err)
	}
	n := len(f.Ops())
	_, err := f.System().Create(usbgadget.Config{SerialNumber: "board-1"})
	if !errors.Is(err, usbgadget.ErrNotOurs) {
		t.Fatalf("err = %v, want ErrNotOurs", err)
	}
	if got := f.Ops()[n:]; len(got) > 0 {
		t.Fatalf("touched a gadget it did not make: %q", got)
	}
}

// TestLeftoverReplaced: a gadget an earlier agent made and never removed
// (killed while bound) is removed and made again.
func TestLeftoverReplaced(t *testing.T) {
	t.Parallel()
	f := gadgettest.New(t, "u")
	if _, err := f.System().Create(usbgadget.Config{SerialNumber: "board-1"}); err != nil {
		t.Fatal(err) // never closed
	}
	n := len(f.Ops())
	g, err := f.System().Create(usbgadget.Config{SerialNumber: "board-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if !g.Replaced || g.TTY() != filepath.Join(f.Root, "dev/ttyGS0") {
		t.Fatalf("replaced %v tty %s", g.Replaced, g.TTY())
	}
	got := f.Ops()[n:]
	if len(got) < 8 || got[0] != "write config/usb_gadget/devid/UDC " || got[6] != "remove config/usb_gadget/devid" {
		t.Fatalf("replacing did:\n  %s", strings.Join(got, "\n  "))
	}
}

func TestStrings(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", strings.Repeat("x", 127), "a\nb", "\xff", "a\x7fb"} {
		if usbgadget.CheckString("serial", s) == nil {
			t.Errorf("CheckString(%q) = nil", s)
		}
	}
	if err := usbgadget.CheckString("serial", strings.Repeat("é", 126)); err != nil {
		t.Error(err)
	}
	f := gadgettest.New(t, "u")
	if _, err := f.System().Create(usbgadget.Config{SerialNumber: "a\nb"}); err == nil || len(f.Ops()) > 0 {
		t.Fatalf("a bad serial number: %v, changes %q", err, f.Ops())
	}
}

func TestParseID(t *testing.T) {
	t.Parallel()
	v, p, err := usbgadget.ParseID("1d6b:0104")
	if err != nil || v != 0x1d6b || p != 0x0104 {
		t.Fatalf("%x %x %v", v, p, err)
	}
	for _, s := range []string{"", "1d6b", "1d6b:104", "1d6b:01040", "0x1d6b:0104", "zzzz:0104", "1d6b:-104"} {
		if _, _, err := usbgadget.ParseID(s); err == nil {
			t.Errorf("ParseID(%q) = nil error", s)
		}
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"1d6b:0104", "ffff:ffff", ":", "1d6b:0104:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, p, err := usbgadget.ParseID(s)
		if err != nil {
			return
		}
		if again := strings.ToLower(s); again != strings.ToLower(
			strings.Join([]string{hex4(v), hex4(p)}, ":")) {
			t.Fatalf("ParseID(%q) = %04x:%04x", s, v, p)
		}
	})
}

func hex4(v uint16) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[v>>12], digits[v>>8&15], digits[v>>4&15], digits[v&15]})
}
