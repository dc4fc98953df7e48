package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"devid/agent/config"
)

// TestIncomplete: a valid config that still lacks what a new device needs
// says so; a complete one says nothing.
func TestIncomplete(t *testing.T) {
	c := config.Default()
	c.Factory.Root = filepath.Join(t.TempDir(), "factory-root.pem")
	got := incomplete(c)
	for _, want := range []string{"dps.id_scope", "factory.port", "factory.root"} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no warning about %s in %q", want, got)
		}
	}
	c.DPS.IDScope = "0ne00000001"
	c.Factory.Port = "/dev/ttyS1"
	if err := os.WriteFile(c.Factory.Root, []byte("pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := incomplete(c); len(got) != 0 {
		t.Errorf("complete config: %q", got)
	}
}
