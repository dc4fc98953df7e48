package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestStatusAndCheckChangeNothing: status and check, documented as
// read-only, report damaged records and leave them where they are: the
// agent sets them aside when it reads them itself. Before, reading
// state.json, assignment.json or renewal.json renamed a damaged one.
func TestStatusAndCheckChangeNothing(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	for _, name := range []string{"state.json", "assignment.json", "renewal.json", "device-id.json"} {
		os.WriteFile(filepath.Join(state, name), []byte("{damaged"), 0o600)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte("state_dir = \""+state+"\"\n[dps]\nid_scope = \"0ne00000001\"\n[local_api]\nsocket = \"\"\n"), 0o644)
	list := func() []string {
		ents, _ := os.ReadDir(state)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	before := list()
	runStatus(context.Background(), io.Discard, statusOpts{cfgPath: cfgPath, asJSON: true})
	runCheck(context.Background(), io.Discard, checkOpts{cfgPath: cfgPath, asJSON: true, offline: true})
	if after := list(); !slices.Equal(before, after) {
		t.Errorf("status and check changed the state dir: %v, then %v", before, after)
	}
	for _, name := range before {
		if b, _ := os.ReadFile(filepath.Join(state, name)); string(b) != "{damaged" {
			t.Errorf("%s changed: %q", name, b)
		}
	}
}
