package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/hal/board"
)

// TestDeviceIDSourceRecordedAndChecked: the factory records where it read
// the device ID, and the agent warns when that source now yields another
// ID (a replaced network card behind a MAC-derived ID). Before, nothing
// was recorded and nothing warned.
func TestDeviceIDSourceRecordedAndChecked(t *testing.T) {
	root := t.TempDir()
	setMAC := func(mac string) {
		p := filepath.Join(root, "sys/class/net/eth0/address")
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(mac+"\n"), 0o644)
	}
	setMAC("02:00:00:00:00:01")
	boardRoot = root
	t.Cleanup(func() { boardRoot = "" })
	cfg := config.Default()
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.DeviceIDSource = "mac"
	id, src, err := board.Reader{Root: boardRoot, Source: board.SourceMAC}.DeviceID()
	if err != nil {
		t.Fatal(err)
	}
	if err := recordDeviceID(cfg, id, src); err != nil {
		t.Fatal(err)
	}
	r, err := (&statedir.Dir{Path: cfg.StateDir}).LoadDeviceID()
	if err != nil || r.DeviceID != "02:00:00:00:00:01" || r.Source != "mac" || r.Configured != "mac" {
		t.Fatalf("device-id.json: %+v %v", r, err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	checkDeviceIDSource(cfg, log)
	if logs.Len() != 0 {
		t.Errorf("same board, yet a warning: %s", logs.String())
	}
	setMAC("02:00:00:00:00:02")
	checkDeviceIDSource(cfg, log)
	if !strings.Contains(logs.String(), "another device ID") || !strings.Contains(logs.String(), "02:00:00:00:00:02") {
		t.Errorf("replaced network card: no warning naming the new ID: %q", logs.String())
	}
}
