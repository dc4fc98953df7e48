// Package hosttest decides what a test does when something it needs from
// the host is missing: a program (swtpm, tpm2-tools, socat, openssl, node,
// softhsm2, chromium) or root, to mount a small tmpfs, or a PostgreSQL
// server to start.
//
// Under a plain `go test` the test is skipped, with the reason. When the
// environment variable DEVID_REQUIRE names the requirement, or is "all",
// the test fails instead: `make test` and `make unit-test` set it, so a
// machine that lost a tool cannot pass by skipping. scripts/deps.sh
// installs every requirement.
//
// It lives in hal, the bottom layer, so that hal's own tests can use it
// and every other package may import it.
package hosttest

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Env is the environment variable that turns a missing requirement into a
// failure: a comma-separated list of requirement names, or "all".
const Env = "DEVID_REQUIRE"

// Requirement names, as DEVID_REQUIRE lists them.
const (
	SWTPM     = "swtpm"      // swtpm and swtpm_setup
	TPM2Tools = "tpm2-tools" // tpm2_readpublic, tpm2_createprimary, ...
	Socat     = "socat"
	OpenSSL   = "openssl"
	Node      = "node" // node and the pinned Azure IoT SDK in simulator/conformance/node
	// SoftHSM2: softhsm2-util and the libsofthsm2.so PKCS#11 module
	// (Debian's softhsm2), for the CA key in a token.
	SoftHSM2 = "softhsm2"
	// Chromium: Debian's chromium, the headless browser the station's
	// web page is tested in.
	Chromium = "chromium"
	// Root: the test mounts its own file system (a small tmpfs to fill).
	Root = "root"
	// PostgreSQL: initdb, pg_ctl and postgres (Debian's postgresql), for
	// servers the tests start themselves (enroll/station/ca/pgtest).
	PostgreSQL = "postgresql"
)

var known = []string{SWTPM, TPM2Tools, Socat, OpenSSL, Node, SoftHSM2, Chromium, Root, PostgreSQL}

// LookPath returns the path of the program bin, which requirement req
// provides. If bin is not on PATH, t is skipped, or fails when
// DEVID_REQUIRE names req.
func LookPath(t testing.TB, req, bin string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		Unavailable(t, req, "%s is not installed (scripts/deps.sh installs it): %v", bin, err)
	}
	return p
}

// Unavailable ends t because requirement req is missing, for the reason
// given by format and args: a skip, or a failure when DEVID_REQUIRE names
// req.
func Unavailable(t testing.TB, req, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	required, err := Required(req)
	switch {
	case err != nil:
		t.Fatalf("%s; and %v", msg, err)
	case required:
		t.Fatalf("%s (%s=%s requires %s)", msg, Env, os.Getenv(Env), req)
	default:
		t.Skipf("%s (set %s=%s to make this a failure)", msg, Env, req)
	}
}

// Required reports whether DEVID_REQUIRE names req. A name in it that is
// not a known requirement is an error, so a typo cannot turn a required
// tool back into a skip.
func Required(req string) (bool, error) {
	if !slices.Contains(known, req) {
		return false, fmt.Errorf("hosttest: unknown requirement %q (known: %s)", req, strings.Join(known, ", "))
	}
	found := false
	for _, name := range strings.Split(os.Getenv(Env), ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "":
		case name == "all" || name == req:
			found = true
		case !slices.Contains(known, name):
			return false, fmt.Errorf("%s names %q, which is not a requirement (known: all, %s)", Env, name, strings.Join(known, ", "))
		}
	}
	return found, nil
}
