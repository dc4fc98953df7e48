package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

// TestCLIControlToken: with serve --control-token-file, the verbs send the
// token named in ready.json; with --control URL they need the file given,
// and without a token the control plane answers 401.
func TestCLIControlToken(t *testing.T) {
	t.Parallel()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("cli-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sim := simtest.Start(t, simtest.WithArgs("--control-token-file", tokenFile))
	bin := simtest.Binary(t)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("connections", "--state", sim.StateDir); err != nil {
		t.Fatalf("connections --state: %v\n%s", err, out)
	}
	if out, err := run("connections", "--control", sim.Ready.ControlURL); err == nil || !strings.Contains(out, "401") {
		t.Fatalf("connections --control without the token: err %v\n%s", err, out)
	}
	if out, err := run("connections", "--control", sim.Ready.ControlURL, "--control-token-file", tokenFile); err != nil {
		t.Fatalf("connections --control --control-token-file: %v\n%s", err, out)
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc"), 0o600)
	if out, err := run("serve", "--state", t.TempDir(), "--control-token-file", short); err == nil || !strings.Contains(out, "at least 16") {
		t.Fatalf("serve with a short token: err %v\n%s", err, out)
	}
}
