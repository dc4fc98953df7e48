package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/agent/config"
	"devid/enroll/rotate"
	"devid/hal/clock/clocktest"
)

// TestNewerSchemaRefusesToStart: a state.json, assignment.json or
// renewal.json or rotation journal written by a newer agent stops New with an error naming
// the file and its schema, and the file is left exactly as it was.
func TestNewerSchemaRefusesToStart(t *testing.T) {
	for _, name := range []string{"state.json", "assignment.json", rotate.RecordFile, rotate.JournalFile} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "s")
			os.MkdirAll(dir, 0o700)
			newer := []byte(`{"schema": 7, "from_the_future": true}`)
			path := filepath.Join(dir, name)
			os.WriteFile(path, newer, 0o600)
			cfg := config.Default()
			cfg.StateDir = dir
			cfg.DPS.IDScope = "0ne0000SIM1"
			cfg.LocalAPI.Socket = ""
			a, err := New(Options{Config: cfg, Clock: clocktest.NewWall(t0), Cloud: &fakeCloud{jam: make(chan struct{})}, Identity: staticIdentity{nil}})
			if err == nil {
				a.queue.Close()
				t.Fatal("New accepted a newer-schema record")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "schema 7") {
				t.Errorf("error does not name the file and schema: %v", err)
			}
			if b, _ := os.ReadFile(path); string(b) != string(newer) {
				t.Errorf("%s changed: %s", name, b)
			}
		})
	}
}
