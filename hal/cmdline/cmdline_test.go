package cmdline

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestExit(t *testing.T) {
	for _, tc := range []struct {
		err     error
		command string
		code    int
		stderr  string
	}{
		{nil, "status", 0, ""},
		{errors.New("agent not running"), "status", 1, "prog status: agent not running\n"},
		{Usagef("unknown command %q", "x"), "", 2, "prog: unknown command \"x\"\nrun 'prog help' for usage\n"},
		{Usage(errors.New("--port is required")), "factory", 2, "prog factory: --port is required\nrun 'prog help factory' for usage\n"},
		{fmt.Errorf("wrapped: %w", Usage(errors.New("bad"))), "help", 2, "prog help: wrapped: bad\nrun 'prog help' for usage\n"},
		{WithStatus(1, nil), "status", 1, ""},
		{WithStatus(2, errors.New("permission denied")), "status", 2, "prog status: permission denied\n"},
	} {
		var stderr bytes.Buffer
		if code := Exit("prog", tc.command, tc.err, &stderr); code != tc.code || stderr.String() != tc.stderr {
			t.Errorf("Exit(%v, %q) = %d %q, want %d %q", tc.err, tc.command, code, stderr.String(), tc.code, tc.stderr)
		}
	}
}

func TestLookup(t *testing.T) {
	names := []string{"run", "ca init", "ca revoke"}
	for _, tc := range []struct {
		args []string
		i    int
		rest []string
		err  string
	}{
		{[]string{"run", "--x"}, 0, []string{"--x"}, ""},
		{[]string{"ca", "revoke", "--serial", "1"}, 2, []string{"--serial", "1"}, ""},
		{[]string{"ca"}, -1, nil, `"ca" needs a subcommand: ca init, ca revoke`},
		{[]string{"nope"}, -1, nil, `unknown command "nope"`},
		{nil, -1, nil, "no command"},
	} {
		i, rest, err := Lookup(names, tc.args)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err || !IsUsage(err) {
				t.Errorf("Lookup(%q): %v, want usage error %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || i != tc.i || strings.Join(rest, " ") != strings.Join(tc.rest, " ") {
			t.Errorf("Lookup(%q) = %d %q %v, want %d %q", tc.args, i, rest, err, tc.i, tc.rest)
		}
	}
}

func testDoc() Doc {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.Bool("json", false, "print JSON")
	fs.String("config", "/etc/x.toml", "the `FILE` to read")
	fs.Duration("wait", 0, "how long to wait")
	fs.String("name", "a b", "a name")
	return Doc{Name: "prog", Section: 8, Summary: "does things", Note: "A note.",
		Commands: []Command{
			{Name: "status", Args: "[--json]", Purpose: "print the state", Example: "prog status", Flags: Flags(fs, nil)},
			VersionCommand("prog"), HelpCommand("prog", "status"),
		}}
}

func TestFlagsLeaveOutZeroDefaults(t *testing.T) {
	got := testDoc().Commands[0].Flags
	want := []Flag{
		{Name: "config", Arg: "FILE", Usage: "the FILE to read", Default: "/etc/x.toml"},
		{Name: "json", Usage: "print JSON"},
		{Name: "name", Arg: "string", Usage: "a name", Default: `"a b"`},
		{Name: "wait", Arg: "duration", Usage: "how long to wait"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Flags = %+v, want %+v", got, want)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("a", false, "")
	fs.Bool("b", false, "")
	if got := Flags(fs, func(n string) bool { return n == "b" }); len(got) != 1 || got[0].Name != "b" {
		t.Errorf("Flags with keep = %+v, want only b", got)
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := Help(testDoc(), nil, &out); err != nil {
		t.Fatal(err)
	}
	want := "prog: does things\n\nusage: prog <command> [flags]\n\ncommands:\n" +
		"  status   print the state\n" +
		"  version  print the version, commit, Go version and platform\n" +
		"  help     print the commands, or one command's flags and example; --json: the command line as JSON\n" +
		"\nA note.\nRun 'prog help COMMAND' (or 'prog COMMAND --help') for its flags and an example.\n"
	if out.String() != want {
		t.Errorf("help:\n%s\nwant:\n%s", out.String(), want)
	}

	out.Reset()
	if err := Help(testDoc(), []string{"status"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "usage: prog status [--json]\n") || !strings.Contains(out.String(), "  --config FILE\n      the FILE to read (default /etc/x.toml)\n") {
		t.Errorf("help status:\n%s", out.String())
	}

	out.Reset()
	if err := Help(testDoc(), []string{"--json"}, &out); err != nil {
		t.Fatal(err)
	}
	var d Doc
	if err := json.Unmarshal(out.Bytes(), &d); err != nil || d.Name != "prog" || len(d.Commands) != 3 || d.Note != "" {
		t.Errorf("help --json: %v %+v", err, d)
	}
	if strings.Contains(out.String(), "A note.") {
		t.Error("help --json carries the plain help's note")
	}

	if err := Help(testDoc(), []string{"nope"}, &out); err == nil || !IsUsage(err) {
		t.Errorf("help nope: %v, want a usage error", err)
	}
}

func TestPrintVersion(t *testing.T) {
	var out bytes.Buffer
	if err := PrintVersion(&out, "prog", "1.2.3", "abc123", true); err != nil {
		t.Fatal(err)
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["program"] != "prog" || v["version"] != "1.2.3" || v["commit"] != "abc123" || v["go"] == "" || v["platform"] == "" {
		t.Errorf("version --json: %v %s", err, out.String())
	}
	out.Reset()
	PrintVersion(&out, "prog", "1.2.3", "abc123", false)
	if !strings.HasPrefix(out.String(), "prog 1.2.3\ncommit:   abc123\n") {
		t.Errorf("version: %q", out.String())
	}
}
