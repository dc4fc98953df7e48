// Package softhsmtest gives a test its own SoftHSM2 token: a config file
// and token directory under t.TempDir (SOFTHSM2_CONF is set for the test),
// and a token initialised with softhsm2-util. A missing softhsm2 skips the
// test, or fails it under DEVID_REQUIRE (hal/hosttest).
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"devid/hal/hosttest"
)

// Where Debian's softhsm2 puts the PKCS#11 module.
var modules = []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"}

// Token is an initialised SoftHSM2 token.
type Token struct {
	Module string // path of libsofthsm2.so
	Label  string
	PIN    string // user PIN
	Conf   string // the SOFTHSM2_CONF file
}

// New makes a token labelled label with user PIN pin. It sets
// SOFTHSM2_CONF with t.Setenv, so the test must not be parallel.
func New(t *testing.T, label, pin string) *Token {
	t.Helper()
	util := hosttest.LookPath(t, hosttest.SoftHSM2, "softhsm2-util")
	module := ""
	for _, m := range modules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	if module == "" {
		hosttest.Unavailable(t, hosttest.SoftHSM2, "the SoftHSM2 PKCS#11 module is not installed (looked in %v; scripts/deps.sh installs softhsm2)", modules)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", pin+"-so")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return &Token{Module: module, Label: label, PIN: pin, Conf: conf}
}

// URI is a PKCS#11 URI of the token with the key label object and
// the PIN as pin-value.
func (tk *Token) URI(object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-value=%s", tk.Label, object, tk.Module, tk.PIN)
}
