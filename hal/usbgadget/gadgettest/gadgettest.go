// Package gadgettest is a fake configfs and sysfs for hal/usbgadget: a
// temporary directory that behaves as the kernel does where usbgadget
// relies on it, and a log of every change made to it.
//
// Like configfs it makes a gadget's attributes and default groups on
// mkdir, gives an ACM function a port number and a /dev/ttyGS<N>, refuses
// to remove a directory that still holds something the user made, a
// function still linked into a configuration or a gadget still bound, and
// binds only to a UDC listed in the class directory.
package gadgettest

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"devid/hal/usbgadget"
)

// Fake is one fake system: configfs at Root/config, the UDC class at
// Root/udc, /dev at Root/dev, the mount table at Root/mounts.
type Fake struct {
	Root string
	// NoACM makes mkdir of an ACM function fail as it does without
	// usb_f_acm.
	NoACM bool
	// TTY, if set, makes each /dev/ttyGS<N> a link to TTY(N) (a pty, so
	// that a test can talk through it) instead of an empty file.
	TTY func(n int) string

	mu     sync.Mutex
	ops    []string
	kernel map[string]bool // paths the kernel made (attributes, default groups)
}

var _ usbgadget.FS = (*Fake)(nil)

// New makes a fake system with configfs mounted, libcomposite loaded and
// the named UDCs.
func New(t testing.TB, udcs ...string) *Fake {
	t.Helper()
	f := &Fake{Root: t.TempDir(), kernel: map[string]bool{}}
	for _, d := range []string{"config/usb_gadget", "udc", "dev"} {
		if err := os.MkdirAll(filepath.Join(f.Root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range udcs {
		if err := os.Mkdir(filepath.Join(f.Root, "udc", u), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mounts := fmt.Sprintf("sysfs /sys sysfs rw 0 0\nconfigfs %s configfs rw 0 0\n", filepath.Join(f.Root, "config"))
	if err := os.WriteFile(filepath.Join(f.Root, "mounts"), []byte(mounts), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// System is a usbgadget.System on the fake.
func (f *Fake) System() usbgadget.System {
	return usbgadget.System{FS: f, ConfigFS: filepath.Join(f.Root, "config"), UDCClass: filepath.Join(f.Root, "udc"),
		Dev: filepath.Join(f.Root, "dev"), Mounts: filepath.Join(f.Root, "mounts")}
}

// Unload removes usb_gadget, as when libcomposite is not loaded.
func (f *Fake) Unload() error { return os.RemoveAll(filepath.Join(f.Root, "config/usb_gadget")) }

// Unmount empties the mount table and configfs, as when configfs is not
// mounted.
func (f *Fake) Unmount() error {
	if err := f.Unload(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(f.Root, "mounts"), []byte("sysfs /sys sysfs rw 0 0\n"), 0o644)
}

// Ops is every change made so far, one line each, with paths relative to
// Root: "mkdir P", "write P VALUE", "symlink TARGET LINK", "remove P".
func (f *Fake) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ops...)
}

func (f *Fake) rel(p string) string {
	r, err := filepath.Rel(f.Root, p)
	if err != nil {
		return p
	}
	return r
}

func (f *Fake) log(format string, args ...any) {
	f.mu.Lock()
	f.ops = append(f.ops, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

// kind says what a configfs path is, from its place under usb_gadget:
// "gadget", "strings", "config", "configstrings", "function" or "".
func (f *Fake) kind(p string) string {
	r, err := filepath.Rel(filepath.Join(f.Root, "config/usb_gadget"), p)
	if err != nil || strings.HasPrefix(r, "..") {
		return ""
	}
	parts := strings.Split(r, "/")
	switch {
	case len(parts) == 1:
		return "gadget"
	case len(parts) == 3 && parts[1] == "strings":
		return "strings"
	case len(parts) == 3 && parts[1] == "configs":
		return "config"
	case len(parts) == 5 && parts[1] == "configs" && parts[3] == "strings":
		return "configstrings"
	case len(parts) == 3 && parts[1] == "functions":
		return "function"
	}
	return ""
}

// Mkdir makes a directory and, as configfs does, its attributes.
func (f *Fake) Mkdir(p string) error {
	f.log("mkdir %s", f.rel(p))
	kind := f.kind(p)
	var attrs map[string]string
	var groups []string
	switch kind {
	case "gadget":
		attrs = map[string]string{"idVendor": "0x0000\n", "idProduct": "0x0000\n", "bcdUSB": "0x0200\n", "UDC": "\n"}
		groups = []string{"configs", "functions", "strings"}
	case "strings":
		attrs = map[string]string{"serialnumber": "\n", "manufacturer": "\n", "product": "\n"}
	case "config":
		attrs = map[string]string{"MaxPower": "2\n", "bmAttributes": "0x80\n"}
		groups = []string{"strings"}
	case "configstrings":
		attrs = map[string]string{"configuration": "\n"}
	case "function":
		if !strings.HasPrefix(filepath.Base(p), "acm.") || f.NoACM {
			return &fs.PathError{Op: "mkdir", Path: p, Err: syscall.ENOENT}
		}
		n := f.nextPort()
		attrs = map[string]string{"port_num": fmt.Sprintf("%d\n", n)}
		if err := f.makeTTY(n); err != nil {
			return err
		}
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		return err
	}
	for name, v := range attrs {
		a := filepath.Join(p, name)
		if err := os.WriteFile(a, []byte(v), 0o644); err != nil {
			return err
		}
		f.mark(a)
	}
	for _, g := range groups {
		d := filepath.Join(p, g)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		f.mark(d)
	}
	return nil
}

func (f *Fake) mark(p string) {
	f.mu.Lock()
	f.kernel[p] = true
	f.mu.Unlock()
}

func (f *Fake) isKernel(p string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kernel[p]
}

// nextPort is the lowest ttyGS number not in use.
func (f *Fake) nextPort() int {
	for n := 0; ; n++ {
		if _, err := os.Lstat(filepath.Join(f.Root, "dev", fmt.Sprintf("ttyGS%d", n))); err != nil {
			return n
		}
	}
}

func (f *Fake) makeTTY(n int) error {
	p := filepath.Join(f.Root, "dev", fmt.Sprintf("ttyGS%d", n))
	if f.TTY != nil {
		return os.Symlink(f.TTY(n), p)
	}
	return os.WriteFile(p, nil, 0o600)
}

// WriteFile stores value in an attribute that exists. UDC binds to a
// listed controller, or unbinds with an empty value.
func (f *Fake) WriteFile(p, value string) error {
	f.log("write %s %s", f.rel(p), strings.TrimRight(value, "\n"))
	if _, err := os.Lstat(p); err != nil {
		return err
	}
	if filepath.Base(p) == "UDC" && f.kind(filepath.Dir(p)) == "gadget" {
		name := strings.TrimSpace(value)
		if name != "" {
			if _, err := os.Stat(filepath.Join(f.Root, "udc", name)); err != nil {
				return &fs.PathError{Op: "write", Path: p, Err: syscall.ENODEV}
			}
		} else if cur, _ := os.ReadFile(p); strings.TrimSpace(string(cur)) == "" {
			return &fs.PathError{Op: "write", Path: p, Err: syscall.ENODEV} // not bound
		}
	}
	return os.WriteFile(p, []byte(value), 0o644)
}

func (f *Fake) ReadFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func (f *Fake) ReadDir(p string) ([]string, error) {
	es, err := os.ReadDir(p)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (f *Fake) Symlink(target, link string) error {
	f.log("symlink %s %s", f.rel(target), f.rel(link))
	return os.Symlink(target, link)
}

func (f *Fake) Stat(p string) (fs.FileInfo, error) { return os.Stat(p) }

// Remove unlinks a link, or removes a directory with the attributes and
// default groups the kernel made in it. It refuses what configfs refuses.
func (f *Fake) Remove(p string) error {
	f.log("remove %s", f.rel(p))
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return os.Remove(p)
	}
	if f.isKernel(p) {
		return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.EPERM} // a default group
	}
	switch f.kind(p) {
	case "gadget":
		if u, _ := os.ReadFile(filepath.Join(p, "UDC")); strings.TrimSpace(string(u)) != "" {
			return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.EBUSY}
		}
	case "function":
		if f.linked(p) {
			return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.EBUSY}
		}
	}
	if err := f.removeKernelMade(p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	if f.kind(p) == "function" {
		f.removeTTYs()
	}
	return nil
}

// removeKernelMade removes the attributes and (empty) default groups in p;
// anything else left makes the rmdir fail, as in configfs.
func (f *Fake) removeKernelMade(p string) error {
	es, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	for _, e := range es {
		c := filepath.Join(p, e.Name())
		if !f.isKernel(c) {
			return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.ENOTEMPTY}
		}
		if e.IsDir() {
			if sub, _ := os.ReadDir(c); len(sub) > 0 {
				return &fs.PathError{Op: "rmdir", Path: p, Err: syscall.ENOTEMPTY}
			}
		}
	}
	for _, e := range es {
		if err := os.Remove(filepath.Join(p, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// linked says whether a configuration links to the function at p.
func (f *Fake) linked(p string) bool {
	links, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(p)), "configs", "*", "*"))
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil && t == p {
			return true
		}
	}
	return false
}

// removeTTYs removes the ttyGS nodes no function's port_num names.
func (f *Fake) removeTTYs() {
	used := map[string]bool{}
	nums, _ := filepath.Glob(filepath.Join(f.Root, "config/usb_gadget/*/functions/acm.*/port_num"))
	for _, n := range nums {
		b, _ := os.ReadFile(n)
		used["ttyGS"+strings.TrimSpace(string(b))] = true
	}
	ttys, _ := filepath.Glob(filepath.Join(f.Root, "dev", "ttyGS*"))
	for _, t := range ttys {
		if !used[filepath.Base(t)] {
			_ = os.Remove(t)
		}
	}
}
