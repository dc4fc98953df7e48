// Package cmdline holds the command-line conventions every devid binary
// (devid-agent, devid-jig, devid-sim) follows, so that they cannot drift
// apart:
//   - help, --help, -h and COMMAND --help print to stdout and exit 0;
//   - a usage error prints what was wrong to stderr and exits 2, any
//     other error exits 1, unless the command chose its status with
//     WithStatus (status: 2 when the state cannot be determined);
//   - version and --version print version, commit, Go version and
//     platform, --json as one JSON object;
//   - help --json prints the command line as JSON: agent/dist makes the
//     man pages from it, so a page cannot drift from its binary.
//
// It lives under hal because hal is the one layer all three binaries may
// import (docs/architecture.md): the simulator imports neither agent nor
// dps, and the agent never links the station. Like hal/atomicfile and
// hal/clock it is a bottom-layer utility, not a hardware seam.
package cmdline

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// usageError marks a bad command, flag or argument: exit 2 rather than 1.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// Usage marks err as a usage error (exit status 2).
func Usage(err error) error { return usageError{err} }

// Usagef is Usage(fmt.Errorf(format, a...)).
func Usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// IsUsage reports whether err is (or wraps) a usage error.
func IsUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// statusError is an error with the exit status its command chose.
type statusError struct {
	code int
	err  error
}

func (s statusError) Error() string {
	if s.err == nil {
		return ""
	}
	return s.err.Error()
}

func (s statusError) Unwrap() error { return s.err }

// WithStatus makes the command exit with code (not a usage error: no
// pointer to the help). A nil err prints nothing on stderr: the command
// has already said everything on stdout.
func WithStatus(code int, err error) error { return statusError{code, err} }

// Exit reports err on stderr as "PROGRAM COMMAND: err" and returns the
// exit status: 0 for nil, the chosen one for WithStatus, 2 for a usage
// error (with a pointer to the command's help), 1 otherwise. command is
// "" when no command was recognised.
func Exit(program, command string, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var st statusError
	if errors.As(err, &st) {
		if err.Error() != "" {
			fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(program+" "+command), err)
		}
		return st.code
	}
	fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(program+" "+command), err)
	if !IsUsage(err) {
		return 1
	}
	hint := program + " help"
	if command != "" && command != "help" {
		hint += " " + command
	}
	fmt.Fprintf(stderr, "run '%s' for usage\n", hint)
	return 2
}

// Doc is the command line as help --json prints it.
type Doc struct {
	Name        string    `json:"name"`
	Section     int       `json:"section"` // the man page section
	Summary     string    `json:"summary"`
	Description string    `json:"description"`
	Commands    []Command `json:"commands"`
	Files       []Item    `json:"files,omitempty"`
	Environment []Item    `json:"environment,omitempty"`
	// Note is printed after the command list of plain help.
	Note string `json:"-"`
}

// Command is one command: its synopsis, purpose, example and flags.
type Command struct {
	Name    string `json:"name"`
	Args    string `json:"args"`
	Purpose string `json:"purpose"`
	Example string `json:"example"`
	Flags   []Flag `json:"flags,omitempty"`
	// Exit documents a command's exit status when it says more than the
	// convention (0 success, 1 failure, 2 usage error).
	Exit string `json:"exit,omitempty"`
}

// Flag is one flag of a command.
type Flag struct {
	Name    string `json:"name"`
	Arg     string `json:"arg,omitempty"` // the value's name; "" for a switch
	Usage   string `json:"usage"`
	Default string `json:"default,omitempty"`
}

// Item is a file or environment variable and what it means.
type Item struct {
	Name    string `json:"name"`
	Meaning string `json:"meaning"`
}

// HelpCommand is the help command's own entry, for the end of a Doc.
func HelpCommand(program, exampleTopic string) Command {
	return Command{Name: "help", Args: "[--json] [COMMAND]",
		Purpose: "print the commands, or one command's flags and example; --json: the command line as JSON",
		Example: program + " help " + exampleTopic}
}

// Flags lists the flags of fs for which keep is true (nil: all of them).
// Zero defaults are left out, so that help shows only defaults that say
// something.
func Flags(fs *flag.FlagSet, keep func(name string) bool) []Flag {
	var out []Flag
	fs.VisitAll(func(f *flag.Flag) {
		if keep != nil && !keep(f.Name) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		def := f.DefValue
		if def == "false" || def == "0" || def == "0s" || def == "[]" {
			def = ""
		} else if strings.ContainsAny(def, " \t") {
			def = fmt.Sprintf("%q", def)
		}
		out = append(out, Flag{Name: f.Name, Arg: arg, Usage: usage, Default: def})
	})
	return out
}

// Help implements help [--json] [COMMAND] over d.
func Help(d Doc, args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "--json" || args[0] == "-json") {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	if len(args) == 0 {
		width := 0
		for _, c := range d.Commands {
			width = max(width, len(c.Name))
		}
		fmt.Fprintf(stdout, "%s: %s\n\nusage: %s <command> [flags]\n\ncommands:\n", d.Name, d.Summary, d.Name)
		for _, c := range d.Commands {
			fmt.Fprintf(stdout, "  %-*s  %s\n", width, c.Name, c.Purpose)
		}
		fmt.Fprintln(stdout)
		if d.Note != "" {
			fmt.Fprintln(stdout, strings.TrimSpace(d.Note))
		}
		fmt.Fprintf(stdout, "Run '%s help COMMAND' (or '%s COMMAND --help') for its flags and an example.\n", d.Name, d.Name)
		return nil
	}
	if len(args) == 1 && (args[0] == "-h" || strings.TrimLeft(args[0], "-") == "help") {
		args = []string{"help"}
	}
	name := strings.Join(args, " ")
	for _, c := range d.Commands {
		if c.Name == name {
			CommandHelp(stdout, d.Name, c)
			return nil
		}
	}
	return Usagef("unknown command %q", name)
}

// CommandHelp prints one command's synopsis, purpose, example and flags.
func CommandHelp(w io.Writer, program string, c Command) {
	fmt.Fprintf(w, "usage: %s %s %s\n\n%s\n\nexample:\n  %s\n", program, c.Name, c.Args, c.Purpose, c.Example)
	if len(c.Flags) > 0 {
		fmt.Fprintf(w, "\nflags:\n")
		for _, f := range c.Flags {
			usage := f.Usage
			if f.Default != "" {
				usage += " (default " + f.Default + ")"
			}
			fmt.Fprintf(w, "  --%s\n      %s\n", strings.TrimSpace(f.Name+" "+f.Arg), usage)
		}
	}
	if c.Exit != "" {
		fmt.Fprintf(w, "\nexit status:\n  %s\n", c.Exit)
	}
}

// VersionCommand is the version command's entry in a Doc.
func VersionCommand(program string) Command {
	return Command{Name: "version", Args: "[--json]", Purpose: "print the version, commit, Go version and platform",
		Example: program + " version --json", Flags: []Flag{{Name: "json", Usage: "print one JSON object"}}}
}

// PrintVersion prints program's version, commit, Go version and
// platform; commit "" means the commit the go command stamped.
func PrintVersion(w io.Writer, program, version, commit string, asJSON bool) error {
	v := struct {
		Program  string `json:"program"`
		Version  string `json:"version"`
		Commit   string `json:"commit"`
		Go       string `json:"go"`
		Platform string `json:"platform"`
	}{program, version, buildCommit(commit), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := fmt.Fprintf(w, "%s %s\ncommit:   %s\ngo:       %s\nplatform: %s\n", v.Program, v.Version, v.Commit, v.Go, v.Platform)
	return err
}

// buildCommit is the commit -ldflags set, else the one the go command
// stamped (a plain go build in a checkout), else "unknown".
func buildCommit(commit string) string {
	if commit != "" {
		return commit
	}
	rev, dirty := "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "unknown"
	}
	return rev[:min(12, len(rev))] + dirty
}

// Lookup finds which of names (each one or more words, such as "ca
// init") args start with, and returns its index and the arguments after
// it. A word that only starts multi-word names is a usage error that
// lists them.
func Lookup(names []string, args []string) (int, []string, error) {
	if len(args) == 0 {
		return -1, nil, Usage(errors.New("no command"))
	}
	var group []string
	for i, name := range names {
		words := strings.Fields(name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == name {
			return i, args[len(words):], nil
		}
		if len(words) > 1 && words[0] == args[0] {
			group = append(group, name)
		}
	}
	if len(group) > 0 {
		return -1, nil, Usagef("%q needs a subcommand: %s", args[0], strings.Join(group, ", "))
	}
	return -1, nil, Usagef("unknown command %q", args[0])
}
