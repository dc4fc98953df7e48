package hosttest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestRequired(t *testing.T) {
	for _, tc := range []struct {
		env, req string
		want     bool
		err      bool
	}{
		{"", SWTPM, false, false},
		{"all", SWTPM, true, false},
		{"socat, swtpm", SWTPM, true, false},
		{"socat", SWTPM, false, false},
		{"swtmp", SWTPM, false, true}, // a typo must not silently skip
		{"all", "qemu", false, true},  // callers name known requirements only
	} {
		t.Setenv(Env, tc.env)
		got, err := Required(tc.req)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("%s=%q Required(%q) = %v, %v; want %v, error %v", Env, tc.env, tc.req, got, err, tc.want, tc.err)
		}
	}
}

func TestLookPathFindsInstalledProgram(t *testing.T) {
	t.Setenv(Env, "all")
	// sh is on every machine that can run these tests.
	if p := LookPath(t, Socat, "sh"); p == "" {
		t.Fatal("LookPath returned an empty path for sh")
	}
}

// TestMissingSkipsOrFails runs TestHelperMissing in a child test binary,
// once without and once with DEVID_REQUIRE, and checks the verdict.
func TestMissingSkipsOrFails(t *testing.T) {
	for _, tc := range []struct {
		env      string
		wantFail bool
		wantText string
	}{
		{"", false, "SKIP: TestHelperMissing"},
		{"socat", true, "requires socat"},
		{"all", true, "requires socat"},
		{"node", false, "SKIP: TestHelperMissing"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperMissing$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "HOSTTEST_HELPER=1", Env+"="+tc.env)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.wantFail || !strings.Contains(string(out), tc.wantText) {
			t.Errorf("%s=%q: failed %v, want %v; output lacks %q:\n%s", Env, tc.env, failed, tc.wantFail, tc.wantText, out)
		}
		if !strings.Contains(string(out), "devid-no-such-program is not installed") {
			t.Errorf("%s=%q: the reason does not name the program:\n%s", Env, tc.env, out)
		}
	}
}

func TestHelperMissing(t *testing.T) {
	if os.Getenv("HOSTTEST_HELPER") == "" {
		t.Skip("run by TestMissingSkipsOrFails")
	}
	LookPath(t, Socat, "devid-no-such-program")
	t.Error("LookPath returned for a program that does not exist")
}
