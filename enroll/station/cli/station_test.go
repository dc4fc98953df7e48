package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/station/ca"
	"devid/hal/serial/serialtest"
)

// TestStationCommand runs `devid-jig station --boards 2` on two slots
// given by glob: both boards are programmed, the events file has one
// JSON object per line, and the summary gives the yield.
func TestStationCommand(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(caDir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	byID := filepath.Join(dir, "serial", "by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		link := serialtest.NewLink(t)
		serveBoard(t, link.DeviceTTY, fmt.Sprintf("board-%d", i), caDir, nil)
		if err := os.Symlink(link.JigTTY, filepath.Join(byID, fmt.Sprintf("usb-FTDI_X_%d-if00-port0", i))); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "station.toml")
	if err := os.WriteFile(cfg, []byte(`station = "cli-test"
ca_dir = "ca"
serial_dir = "serial"
watch = "poll"
scan_interval = "50ms"
[[slot]]
name = "A"
port = "by-id/usb-FTDI_*_1-if00-port0"
[[slot]]
name = "B"
port = "by-id/usb-FTDI_*_2-if00-port0"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	evFile := filepath.Join(dir, "events.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := Main(ctx, Build{}, []string{"station", "--config", cfg, "--boards", "2", "--json-events", evFile}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	if !strings.Contains(stdout.String(), "station cli-test: 2 boards: 2 programmed, 0 left alone (programmed already), 0 failed; yield 100.0%") {
		t.Fatalf("stdout:\n%s", stdout.String())
	}
	b, err := os.ReadFile(evFile)
	if err != nil {
		t.Fatal(err)
	}
	programmed := 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var ev struct{ Event, Slot, Station string }
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("events line %q: %v", l, err)
		}
		if ev.Station != "cli-test" || (ev.Slot != "A" && ev.Slot != "B") {
			t.Fatalf("event %q", l)
		}
		if ev.Event == "programmed" {
			programmed++
		}
	}
	if programmed != 2 {
		t.Fatalf("%d programmed events:\n%s", programmed, b)
	}

	// A configuration error names what is wrong.
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("ca_dir = \"ca\"\n[[slot]]\nport = \"by-id/[\"\n"), 0o644)
	stderr.Reset()
	if code := Main(ctx, Build{}, []string{"station", "--config", bad}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "not a valid glob") {
		t.Fatalf("bad config: exit %d, %s", code, stderr.String())
	}
}
