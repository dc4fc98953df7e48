// Command mkimage builds the emulated board's initramfs reproducibly.
//
// It resolves kernel module dependencies by reading each module's .modinfo
// "depends=" field (the Debian .deb ships no modules.dep, and kmod's depmod is
// not needed), stages /init, the modules in load order (/modules.list, and
// /modules-usb.list for the USB stack, which init loads only on a board with
// USB) and any extra files, and writes a newc cpio archive, gzip-compressed, with sorted
// entries, uid/gid 0 and mtime 0. Given the same inputs it writes the same
// bytes, so the image's hash identifies its contents.
//
// Usage:
//
//	mkimage -modroot DIR/lib/modules/VER -modules a,b,c -usb-modules d,e -init INIT \
//	        -file SRC=/bin/devid-agent -o initrd.cpio.gz
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// softDeps are module dependencies that modules.dep does not carry
// ("softdep pre:" in .modinfo names crypto aliases, not modules). Without
// crc32c_generic, mounting ext4 fails with ENOENT ("Cannot load crc32c driver").
var softDeps = map[string][]string{
	"ext4": {"crc32c_generic"},
	"jbd2": {"crc32c_generic"},
}

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	modroot := flag.String("modroot", "", "kernel module tree (…/lib/modules/VERSION)")
	mods := flag.String("modules", "", "comma-separated module names to load, dependencies are added first")
	usbMods := flag.String("usb-modules", "", "comma-separated module names to load on a board with USB only (/modules-usb.list), after -modules")
	initBin := flag.String("init", "", "the static /init binary")
	out := flag.String("o", "", "output .cpio.gz")
	var files fileList
	flag.Var(&files, "file", "SRC=DST extra file (repeatable); DST is an absolute path in the image")
	flag.Parse()
	if *modroot == "" || *initBin == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: -modroot, -init and -o are required")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*modroot, splitList(*mods), splitList(*usbMods), *initBin, files, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var r []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			r = append(r, f)
		}
	}
	return r
}

// entry is one file or directory in the archive.
type entry struct {
	name string // without leading slash
	mode uint32 // full st_mode
	data []byte
}

func run(modroot string, want, usbWant []string, initBin string, files []string, out string) error {
	index, err := indexModules(modroot)
	if err != nil {
		return err
	}
	order, err := resolve(want, index, modDepends)
	if err != nil {
		return err
	}
	var usbOrder []string
	if len(usbWant) > 0 {
		all, err := resolve(usbWant, index, modDepends)
		if err != nil {
			return err
		}
		loaded := map[string]bool{}
		for _, m := range order {
			loaded[m] = true
		}
		for _, m := range all {
			if !loaded[m] {
				usbOrder = append(usbOrder, m)
			}
		}
	}
	ents := map[string]entry{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			ents[d] = entry{name: d, mode: 0o040755}
		}
	}
	add := func(name string, mode uint32, data []byte) {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		addDirs(name)
		ents[name] = entry{name: name, mode: mode, data: data}
	}
	initData, err := os.ReadFile(initBin)
	if err != nil {
		return fmt.Errorf("read init: %w", err)
	}
	add("init", 0o100755, initData)
	for listName, mods := range map[string][]string{"modules.list": order, "modules-usb.list": usbOrder} {
		if len(mods) == 0 && listName != "modules.list" {
			continue
		}
		var list strings.Builder
		for _, m := range mods {
			data, err := os.ReadFile(index[m])
			if err != nil {
				return err
			}
			dst := "lib/modules/" + filepath.Base(index[m])
			add(dst, 0o100644, data)
			list.WriteString("/" + dst + "\n")
		}
		add(listName, 0o100644, []byte(list.String()))
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			return fmt.Errorf("-file %q: want SRC=/absolute/DST", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		mode := uint32(0o100644)
		if st, err := os.Stat(src); err == nil && st.Mode()&0o111 != 0 {
			mode = 0o100755
		}
		add(dst, mode, data)
	}
	// Mount points /init creates anyway; having them makes the layout visible.
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "flash", "etc/devid", "var/lib/devid"} {
		addDirs(d + "/x")
	}
	var buf bytes.Buffer
	if err := writeArchive(&buf, ents); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	fmt.Printf("mkimage: %s %d bytes sha256 %x; modules: %s\n", out, buf.Len(), sha256.Sum256(buf.Bytes()), strings.Join(order, " "))
	return nil
}

// writeArchive writes the entries as a gzip-compressed newc cpio archive in
// name order, with inode numbers by position: the bytes depend only on the
// entries.
func writeArchive(w io.Writer, ents map[string]entry) error {
	names := make([]string, 0, len(ents))
	for n := range ents {
		names = append(names, n)
	}
	sort.Strings(names)
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // header ModTime stays zero
	for i, n := range names {
		if err := writeEntry(zw, ents[n], uint32(i+1)); err != nil {
			return err
		}
	}
	if err := writeEntry(zw, entry{name: "TRAILER!!!"}, 0); err != nil {
		return err
	}
	return zw.Close()
}

// writeEntry writes one newc header, name and data, each padded to 4 bytes.
func writeEntry(w io.Writer, e entry, ino uint32) error {
	nlink := uint32(1)
	if e.mode&0o170000 == 0o040000 {
		nlink = 2
	}
	name := e.name + "\x00"
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name), 0)
	pad := func(n int) []byte { return make([]byte, (4-n%4)%4) }
	for _, b := range [][]byte{[]byte(hdr), []byte(name), pad(len(hdr) + len(name)), e.data, pad(len(e.data))} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func modName(file string) string {
	n := filepath.Base(file)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		n = strings.TrimSuffix(n, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(n, ".ko"), "-", "_")
}

func indexModules(root string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[modName(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules under %s: %w", root, err)
	}
	if len(idx) == 0 {
		return nil, fmt.Errorf("no .ko modules under %s (compressed modules are not supported here)", root)
	}
	return idx, nil
}

// modDepends reads depends= from the module's .modinfo section.
func modDepends(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", file)
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	return parseDepends(data), nil
}

// parseDepends returns the module names in a .modinfo section's
// "depends=" entry (NUL-separated key=value strings), '-' folded to '_'.
func parseDepends(modinfo []byte) []string {
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			return splitList(strings.ReplaceAll(string(v), "-", "_"))
		}
	}
	return nil
}

// resolve returns want plus all dependencies, each after what it needs.
func resolve(want []string, index map[string]string, depsOf func(path string) ([]string, error)) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(m string, from string) error
	visit = func(m, from string) error {
		m = strings.ReplaceAll(m, "-", "_")
		switch state[m] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle at %s", m)
		}
		p, ok := index[m]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) not found", m, from)
			}
			return fmt.Errorf("module %s not found (built in? then drop it from the list)", m)
		}
		state[m] = 1
		deps, err := depsOf(p)
		if err != nil {
			return err
		}
		for _, d := range append(softDeps[m], deps...) {
			if err := visit(d, m); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range want {
		if err := visit(m, ""); err != nil {
			return nil, err
		}
	}
	if len(order) == 0 {
		return nil, errors.New("no modules selected")
	}
	return order, nil
}
