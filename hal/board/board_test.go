package board

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot writes files (path relative to the root -> content) under a temp root.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDeviceIDOrder(t *testing.T) {
	t.Parallel()
	all := map[string]string{
		"proc/device-tree/serial-number":  "00000000ABCDEF01\x00",
		"sys/class/dmi/id/product_serial": "DMI-123\n",
		"sys/class/net/eth0/address":      "02:42:ac:11:00:02\n",
	}
	cases := []struct {
		name       string
		files      map[string]string
		configured string
		want       string
		src        Source
	}{
		{"configured wins", all, "Line-7.Board_42", "line-7.board_42", SourceConfig},
		{"devicetree, NUL trimmed, lowercased", all, "", "00000000abcdef01", SourceDevicetree},
		{"devicetree under /sys/firmware", map[string]string{
			"sys/firmware/devicetree/base/serial-number": "rpi-5\x00",
			"sys/class/dmi/id/product_serial":            "X",
		}, "", "rpi-5", SourceDevicetree},
		{"dmi", map[string]string{
			"sys/class/dmi/id/product_serial": "VMW-42\n",
			"sys/class/net/eth0/address":      "02:42:ac:11:00:02\n",
		}, "", "vmw-42", SourceDMI},
		{"dmi placeholder falls through to mac", map[string]string{
			"sys/class/dmi/id/product_serial": "To Be Filled By O.E.M.\n",
			"sys/class/net/wlan0/address":     "aa:bb:cc:dd:ee:ff\n",
			"sys/class/net/eth1/address":      "02:00:00:00:00:01\n",
			"sys/class/net/eth0/address":      "00:00:00:00:00:00\n",
			"sys/class/net/lo/address":        "00:00:00:00:00:00\n",
		}, "", "02:00:00:00:00:01", SourceMAC},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, src, err := Reader{Root: fakeRoot(t, c.files), Configured: c.configured}.DeviceID()
			if err != nil || id != c.want || src != c.src {
				t.Fatalf("DeviceID() = %q, %s, %v; want %q, %s", id, src, err, c.want, c.src)
			}
		})
	}
}

func TestDeviceIDErrors(t *testing.T) {
	t.Parallel()
	_, _, err := Reader{Root: fakeRoot(t, map[string]string{"sys/class/net/lo/address": "00:00:00:00:00:00"})}.DeviceID()
	if !errors.Is(err, ErrNoID) {
		t.Fatalf("empty board: err = %v, want ErrNoID", err)
	}
	_, _, err = Reader{Root: fakeRoot(t, map[string]string{"sys/class/dmi/id/product_serial": "SN 12/34"})}.DeviceID()
	var ie *IDError
	if !errors.As(err, &ie) || ie.Source != SourceDMI || ie.Value != "SN 12/34" || !errors.Is(err, ErrInvalidID) {
		t.Fatalf("bad DMI serial: err = %v, want IDError naming dmi and the value", err)
	}
	if !strings.Contains(err.Error(), `"SN 12/34"`) || !strings.Contains(err.Error(), "dmi") {
		t.Errorf("error %q does not name the source and value", err)
	}
	if _, _, err := (Reader{Configured: strings.Repeat("a", MaxIDLen+1)}).DeviceID(); !errors.Is(err, ErrInvalidID) {
		t.Errorf("129 characters: err = %v, want ErrInvalidID", err)
	}
	if _, _, err := (Reader{Configured: strings.Repeat("a", MaxIDLen)}).DeviceID(); err != nil {
		t.Errorf("128 characters: %v", err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "dev-1.a_b:c", "0"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Dev", "a b", "a/b", "é", strings.Repeat("x", 129)} {
		if err := Validate(bad); err == nil {
			t.Errorf("Validate(%q) = nil, want error", bad)
		}
	}
}

func TestFake(t *testing.T) {
	var id Identity = Fake{ID: "x", Source: SourceConfig}
	if got, _, _ := id.DeviceID(); got != "x" {
		t.Fatal(got)
	}
}

// TestExplicitSource: device_id_source names one source; it is read even
// when an earlier source exists, and a missing one is an error, never a
// fallback to another.
func TestExplicitSource(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"proc/device-tree/serial-number":  "dt-1\x00",
		"sys/class/dmi/id/product_serial": "DMI-7",
		"sys/class/net/eth0/address":      "02:00:00:00:00:01",
	})
	for src, want := range map[Source]string{SourceDevicetree: "dt-1", SourceDMI: "dmi-7", SourceMAC: "02:00:00:00:00:01"} {
		id, got, err := Reader{Root: root, Source: src}.DeviceID()
		if err != nil || id != want || got != src {
			t.Errorf("source %s: %q %s %v, want %q", src, id, got, err, want)
		}
	}
	empty := fakeRoot(t, map[string]string{"sys/class/net/eth0/address": "02:00:00:00:00:01"})
	if _, _, err := (Reader{Root: empty, Source: SourceDMI}).DeviceID(); err == nil || !strings.Contains(err.Error(), "no dmi serial") {
		t.Errorf("dmi source on a board without DMI: %v, want an error, not the MAC", err)
	}
	if _, _, err := (Reader{Root: root, Source: SourceConfig}).DeviceID(); err == nil || !strings.Contains(err.Error(), "device_id is not set") {
		t.Errorf("config source without device_id: %v", err)
	}
	if _, _, err := (Reader{Root: root, Source: "serial"}).DeviceID(); err == nil {
		t.Error("unknown source accepted")
	}
}

// TestUnreadableSourceIsAnError: a DMI serial that exists but cannot be
// read (root-only on many boards; a directory here, so that the test
// holds when run as root) stops auto with an error naming the path.
// Before, auto fell through to the MAC address: an agent run as another
// user than the factory derived another device ID.
func TestUnreadableSourceIsAnError(t *testing.T) {
	root := fakeRoot(t, map[string]string{"sys/class/net/eth0/address": "02:00:00:00:00:01"})
	os.MkdirAll(filepath.Join(root, "sys/class/dmi/id/product_serial"), 0o755)
	id, src, err := Reader{Root: root}.DeviceID()
	if err == nil || src != SourceDMI || !strings.Contains(err.Error(), "product_serial") {
		t.Errorf("auto with an unreadable DMI serial: %q %s %v, want an error naming it", id, src, err)
	}
}
