package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// readNewc parses a gzip'd newc archive back into entries, checking the
// format as the kernel's initramfs unpacker reads it.
func readNewc(t *testing.T, data []byte) []entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var out []entry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(raw[off+6+8*i:off+6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	for {
		if string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, raw[off:off+6])
		}
		mode, mtime, size, namesize := field(1), field(5), int(field(6)), int(field(11))
		if uid, gid := field(2), field(3); uid != 0 || gid != 0 || mtime != 0 {
			t.Errorf("entry at %d: uid %d gid %d mtime %d, want all 0", off, uid, gid, mtime)
		}
		name := string(raw[off+110 : off+110+namesize-1])
		off = (off + 110 + namesize + 3) &^ 3
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, entry{name: name, mode: mode, data: raw[off : off+size]})
		off = (off + size + 3) &^ 3
	}
}

func TestArchiveIsReproducibleAndReadable(t *testing.T) {
	t.Parallel()
	ents := map[string]entry{
		"init":               {name: "init", mode: 0o100755, data: []byte("\x7fELF...")},
		"lib":                {name: "lib", mode: 0o040755},
		"lib/modules":        {name: "lib/modules", mode: 0o040755},
		"lib/modules/a.ko":   {name: "lib/modules/a.ko", mode: 0o100644, data: []byte("12345")},
		"modules.list":       {name: "modules.list", mode: 0o100644, data: []byte("/lib/modules/a.ko\n")},
		"etc/devid/odd-size": {name: "etc/devid/odd-size", mode: 0o100644, data: []byte("abc")},
	}
	var a, b bytes.Buffer
	if err := writeArchive(&a, ents); err != nil {
		t.Fatal(err)
	}
	if err := writeArchive(&b, ents); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of the same entries differ")
	}
	got := readNewc(t, a.Bytes())
	var names []string
	for _, e := range got {
		names = append(names, e.name)
		want := ents[e.name]
		if e.mode != want.mode || !bytes.Equal(e.data, want.data) {
			t.Errorf("%s: mode %o data %q, want %o %q", e.name, e.mode, e.data, want.mode, want.data)
		}
	}
	if !slices.IsSorted(names) || len(names) != len(ents) {
		t.Errorf("names %v: want all %d, sorted", names, len(ents))
	}
}

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	t.Parallel()
	index := map[string]string{}
	deps := map[string][]string{
		"virtio_net": {"net_failover"}, "net_failover": {"failover"}, "failover": nil,
		"ext4": {"jbd2", "mbcache", "crc16"}, "jbd2": nil, "mbcache": nil, "crc16": nil, "crc32c_generic": nil,
	}
	for m := range deps {
		index[m] = "/k/" + m + ".ko"
	}
	depsOf := func(p string) ([]string, error) {
		return deps[strings.TrimSuffix(strings.TrimPrefix(p, "/k/"), ".ko")], nil
	}
	order, err := resolve([]string{"virtio-net", "ext4", "failover"}, index, depsOf)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m]; dup {
			t.Fatalf("%s listed twice in %v", m, order)
		}
		pos[m] = i
	}
	for m, ds := range deps {
		if _, ok := pos[m]; !ok && m != "crc32c_generic" {
			t.Errorf("%s missing from %v", m, order)
		}
		for _, d := range append(ds, softDeps[m]...) {
			if pos[d] > pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, order)
			}
		}
	}
	if _, err := resolve([]string{"nope"}, index, depsOf); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown module: err %v, want one naming it", err)
	}
	deps["failover"] = []string{"virtio_net"}
	if _, err := resolve([]string{"virtio_net"}, index, depsOf); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: err %v", err)
	}
}

func TestParseDepends(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"license=GPL\x00depends=jbd2,mbcache,crc16\x00intree=Y\x00", []string{"jbd2", "mbcache", "crc16"}},
		{"depends=\x00", nil},
		{"name=x\x00", nil},
		{"depends=nf-conntrack,x\x00", []string{"nf_conntrack", "x"}},
	} {
		if got := parseDepends([]byte(c.in)); !slices.Equal(got, c.want) {
			t.Errorf("parseDepends(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func FuzzParseDepends(f *testing.F) {
	f.Add([]byte("license=GPL\x00depends=jbd2,mbcache,crc16\x00"))
	f.Add([]byte("depends=,,a-b,\x00depends=c"))
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range parseDepends(data) {
			if m == "" || strings.ContainsAny(m, ",-\x00") {
				t.Fatalf("bad module name %q from %q", m, data)
			}
		}
	})
}
