package keys_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"devid/enroll/keys"
)

func TestFileBackend(t *testing.T) {
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state")
	st, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Name() != "file" {
		t.Fatalf("Name = %q", st.Name())
	}
	if _, err := st.Load(); !errors.Is(err, keys.ErrNoKey) {
		t.Fatalf("Load before Create: %v, want ErrNoKey", err)
	}
	k, err := st.Create()
	if err != nil {
		t.Fatal(err)
	}
	if k.Backend() != "file" {
		t.Fatalf("Backend = %q", k.Backend())
	}
	path := keys.DefaultFilePath(state)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if di, _ := os.Stat(state); di.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v, want 0700", di.Mode().Perm())
	}
	if _, err := st.Create(); !errors.Is(err, keys.ErrKeyExists) {
		t.Fatalf("second Create: %v, want ErrKeyExists", err)
	}
	// The key on disk is the same key, and it signs.
	k2, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(*ecdsa.PublicKey).Equal(k2.Public()) {
		t.Fatal("loaded key differs from created key")
	}
	d := sha256.Sum256([]byte("x"))
	sig, err := k2.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("signature does not verify: %v", err)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(state)
	if len(ents) != 1 {
		t.Fatalf("state dir holds %d entries, want only the key", len(ents))
	}
	if err := st.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := st.Destroy(); err != nil {
		t.Fatalf("Destroy of a missing key: %v", err)
	}
	if _, err := st.Load(); !errors.Is(err, keys.ErrNoKey) {
		t.Fatalf("Load after Destroy: %v", err)
	}
}

func TestFileBackendTightensDirAndRejectsJunk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "k.pem")
	st, err := keys.Open("file:"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(); err != nil {
		t.Fatal(err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v, want tightened to 0700", di.Mode().Perm())
	}
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := st.Load(); err == nil || errors.Is(err, keys.ErrNoKey) {
		t.Fatalf("junk key file: %v, want a parse error", err)
	}
	if _, err := keys.Open("nosuch:x", dir); !errors.Is(err, keys.ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
}
