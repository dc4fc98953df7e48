package dist

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestCommandLineConventions checks what the man pages and the packages
// promise of each shipped binary: help and --help on stdout with exit 0,
// usage errors on stderr with exit 2, a purpose and an example for every
// command, and version output that names version, commit, Go and platform.
func TestCommandLineConventions(t *testing.T) {
	dir := t.TempDir()
	if err := BuildHostBinaries(root, dir, "-X main.version=9.8.7", "-X main.commit=0123456789ab"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"devid-agent", "devid-jig", "devid-sim"} {
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(dir, name)
			run := func(args ...string) (stdout, stderr string, code int) {
				t.Helper()
				var o, e bytes.Buffer
				cmd := exec.Command(bin, args...)
				cmd.Stdout, cmd.Stderr = &o, &e
				err := cmd.Run()
				var ee *exec.ExitError
				switch {
				case errors.As(err, &ee):
					code = ee.ExitCode()
				case err != nil:
					t.Fatal(err)
				}
				return o.String(), e.String(), code
			}
			want := func(args []string, code int, toStdout bool) string {
				t.Helper()
				out, errOut, got := run(args...)
				if got != code || (out != "") != toStdout || (errOut != "") == toStdout {
					t.Errorf("%s %s: exit %d, stdout %d bytes, stderr %q; want exit %d and output on %s",
						name, strings.Join(args, " "), got, len(out), errOut, code, map[bool]string{true: "stdout only", false: "stderr only"}[toStdout])
				}
				return out
			}
			for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"help", "version"}, {"version", "--help"}} {
				want(args, 0, true)
			}
			var doc cliDoc
			if err := json.Unmarshal([]byte(want([]string{"help", "--json"}, 0, true)), &doc); err != nil {
				t.Fatalf("help --json: %v", err)
			}
			if doc.Name != name || doc.Summary == "" || doc.Description == "" || len(doc.Commands) < 3 {
				t.Errorf("help --json: %+v", doc)
			}
			for _, c := range doc.Commands {
				if c.Purpose == "" || strings.Contains(c.Purpose, "\n") || !strings.HasPrefix(c.Example, name+" "+c.Name) {
					t.Errorf("command %q: want a one-line purpose and an example of it, got %q / %q", c.Name, c.Purpose, c.Example)
				}
				words := strings.Fields(c.Name)
				help := want(append(append([]string{}, words...), "--help"), 0, true)
				if !strings.Contains(help, c.Purpose) || !strings.Contains(help, c.Example) {
					t.Errorf("%s %s --help lacks its purpose or example:\n%s", name, c.Name, help)
				}
				want(append([]string{"help"}, words...), 0, true)
			}
			for _, args := range [][]string{{"no-such-command"}, {"version", "--no-such-flag"}, {"version", "extra"}, {"help", "no-such-command"}} {
				want(args, 2, false)
			}
			platform := runtime.GOOS + "/" + runtime.GOARCH
			for _, args := range [][]string{{"version"}, {"--version"}} {
				out := want(args, 0, true)
				for _, s := range []string{name + " 9.8.7", "commit:   0123456789ab", "go:       " + runtime.Version(), "platform: " + platform} {
					if !strings.Contains(out, s) {
						t.Errorf("%s %s: %q lacks %q", name, args[0], out, s)
					}
				}
			}
			for _, args := range [][]string{{"version", "--json"}, {"--version", "--json"}} {
				var v map[string]string
				if err := json.Unmarshal([]byte(want(args, 0, true)), &v); err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				if v["program"] != name || v["version"] != "9.8.7" || v["commit"] != "0123456789ab" || v["go"] != runtime.Version() || v["platform"] != platform {
					t.Errorf("%v: %v", args, v)
				}
			}
		})
	}
}
