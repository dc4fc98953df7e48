package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCanReadByMode: permissions are judged for the agent's user, not
// for whoever runs config check (root reads everything).
func TestCanReadByMode(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	stranger := account{name: "devid", uid: os.Geteuid() + 4242, gid: os.Getegid() + 4242}
	if stranger.canRead(st) {
		t.Error("a 0600 file of another user counted as readable")
	}
	err = checkPEMFile(p, stranger)
	if err == nil || !strings.Contains(err.Error(), "not readable by user devid (mode 0600") {
		t.Errorf("got %v, want a message naming the user and mode", err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(p)
	if !stranger.canRead(st) {
		t.Error("a 0644 file counted as unreadable")
	}
}

// TestStateDirChecks: the state dir must be a directory the agent's
// user owns, or creatable.
func TestStateDirChecks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	me := account{name: "me", uid: os.Geteuid(), gid: os.Getegid()}
	if err := checkStateDir(filepath.Join(dir, "new", "state"), me); err != nil {
		t.Errorf("a dir the agent will create: %v", err)
	}
	if err := checkStateDir(dir, me); err != nil {
		t.Errorf("own dir: %v", err)
	}
	other := account{name: "devid", uid: os.Geteuid() + 4242}
	if err := checkStateDir(dir, other); err == nil || !strings.Contains(err.Error(), "not to the agent's user devid") {
		t.Errorf("dir of another user: got %v", err)
	}
	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkStateDir(f, me); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("a file as state dir: got %v", err)
	}
	if err := checkStateDir(filepath.Join(f, "sub"), me); err == nil || !strings.Contains(err.Error(), "cannot be created") {
		t.Errorf("state dir under a file: got %v", err)
	}
}
