package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// The command-line conventions every devid binary follows (devid-agent and
// devid-sim carry the same few functions; the layering of
// docs/architecture.md leaves them no package all three may import):
//   - help, --help, -h and COMMAND --help print to stdout and exit 0;
//   - a usage error prints what was wrong to stderr and exits 2;
//   - version and --version print version, commit, Go version and
//     platform, --json as one JSON object;
//   - help --json prints the command line as JSON: agent/dist makes the
//     man page from it, so the page cannot drift from the binary.

const progName = "devid-jig"

// Build is what the binary was built from (set by -ldflags in its main).
type Build struct {
	Version string
	Commit  string // "": the commit the go command stamped, if any
}

// usageError marks a bad command, flag or argument: exit 2 rather than 1.
type usageError struct{ error }

// Main runs devid-jig with args (without the program name) and returns
// the exit status.
func Main(ctx context.Context, b Build, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "help", "-h", "-help", "--help":
			return exitStatus(help(args[1:], stdout), stderr, "help")
		case "--version", "-version":
			args = append([]string{"version"}, args[1:]...)
		}
	}
	c, rest, err := lookup(args)
	if err != nil {
		return exitStatus(err, stderr, "")
	}
	fs := flag.NewFlagSet(progName+" "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, help goes to stdout
	run := c.bind(fs, streams{stdout, stderr, b})
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandHelp(stdout, describeCommand(c))
			return 0
		}
		return exitStatus(usageError{err}, stderr, c.name)
	}
	if fs.NArg() > 0 {
		return exitStatus(usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}, stderr, c.name)
	}
	for _, r := range c.required {
		if f := fs.Lookup(r); f == nil || f.Value.String() == "" {
			return exitStatus(usageError{fmt.Errorf("--%s is required", r)}, stderr, c.name)
		}
	}
	return exitStatus(run(ctx), stderr, c.name)
}

// lookup finds the command args start with.
func lookup(args []string) (command, []string, error) {
	if len(args) == 0 {
		return command{}, nil, usageError{errors.New("no command")}
	}
	var group []string
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			return c, args[len(words):], nil
		}
		if len(words) > 1 && words[0] == args[0] {
			group = append(group, c.name)
		}
	}
	if len(group) > 0 {
		return command{}, nil, usageError{fmt.Errorf("%q needs a subcommand: %s", args[0], strings.Join(group, ", "))}
	}
	return command{}, nil, usageError{fmt.Errorf("unknown command %q", args[0])}
}

// exitStatus reports err on stderr and maps it to the exit status.
func exitStatus(err error, stderr io.Writer, name string) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(progName+" "+name), err)
	var u usageError
	if !errors.As(err, &u) {
		return 1
	}
	hint := progName + " help"
	if name != "" && name != "help" {
		hint += " " + name
	}
	fmt.Fprintf(stderr, "run '%s' for usage\n", hint)
	return 2
}

// help implements help [--json] [COMMAND].
func help(args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "--json" || args[0] == "-json") {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(describe())
	}
	if len(args) == 0 {
		d := describe()
		fmt.Fprintf(stdout, "%s: %s\n\nusage: %s <command> [flags]\n\ncommands:\n", progName, d.Summary, progName)
		for _, c := range d.Commands {
			fmt.Fprintf(stdout, "  %-10s %s\n", c.Name, c.Purpose)
		}
		fmt.Fprintf(stdout, "\nRun '%s help COMMAND' (or '%s COMMAND --help') for its flags and an example.\n", progName, progName)
		return nil
	}
	if len(args) == 1 && (args[0] == "-h" || strings.TrimLeft(args[0], "-") == "help") {
		args = []string{"help"}
	}
	for _, c := range describe().Commands {
		if c.Name == strings.Join(args, " ") {
			commandHelp(stdout, c)
			return nil
		}
	}
	return usageError{fmt.Errorf("unknown command %q", strings.Join(args, " "))}
}

// commandHelp prints one command's synopsis, purpose, example and flags.
func commandHelp(w io.Writer, d cliCommand) {
	fmt.Fprintf(w, "usage: %s %s %s\n\n%s\n\nexample:\n  %s\n", progName, d.Name, d.Args, d.Purpose, d.Example)
	if len(d.Flags) > 0 {
		fmt.Fprintf(w, "\nflags:\n")
		for _, f := range d.Flags {
			usage := f.Usage
			if f.Default != "" {
				usage += " (default " + f.Default + ")"
			}
			fmt.Fprintf(w, "  --%s\n      %s\n", strings.TrimSpace(f.Name+" "+f.Arg), usage)
		}
	}
}

// cliDoc is the command line as help --json prints it.
type cliDoc struct {
	Name        string       `json:"name"`
	Section     int          `json:"section"`
	Summary     string       `json:"summary"`
	Description string       `json:"description"`
	Commands    []cliCommand `json:"commands"`
	Files       []cliItem    `json:"files,omitempty"`
	Environment []cliItem    `json:"environment,omitempty"`
}

type cliCommand struct {
	Name    string    `json:"name"`
	Args    string    `json:"args"`
	Purpose string    `json:"purpose"`
	Example string    `json:"example"`
	Flags   []cliFlag `json:"flags,omitempty"`
}

type cliFlag struct {
	Name    string `json:"name"`
	Arg     string `json:"arg,omitempty"` // the value's name; "" for a switch
	Usage   string `json:"usage"`
	Default string `json:"default,omitempty"`
}

type cliItem struct {
	Name    string `json:"name"`
	Meaning string `json:"meaning"`
}

func describeCommand(c command) cliCommand {
	out := cliCommand{Name: c.name, Args: c.args, Purpose: c.purpose, Example: c.example}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.bind(fs, streams{io.Discard, io.Discard, Build{}})
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		def := f.DefValue
		if def == "false" || def == "0" || def == "0s" {
			def = ""
		} else if strings.ContainsAny(def, " \t") {
			def = fmt.Sprintf("%q", def)
		}
		out.Flags = append(out.Flags, cliFlag{Name: f.Name, Arg: arg, Usage: usage, Default: def})
	})
	return out
}

func describe() cliDoc {
	d := cliDoc{
		Name: progName, Section: 1,
		Summary: "factory station tool for devid boards",
		Description: "devid-jig runs on the factory test station. Over the board's serial line it asks the devid agent " +
			"for a certificate request carrying the device ID, has the factory CA sign it (a local CA directory or an " +
			"EST server), installs the certificate and checks that the board stored it. It also keeps the local CA: " +
			"its policy, the ledger of every issuance and the CRL.",
		Files: []cliItem{
			{"CA_DIR/root.pem", "the factory root certificate: devices get it as factory.root"},
			{"CA_DIR/ledger.jsonl", "one line for every certificate issued or revoked"},
			{"CA_DIR/crl.pem", "the certificate revocation list"},
		},
	}
	for _, c := range commands {
		d.Commands = append(d.Commands, describeCommand(c))
	}
	d.Commands = append(d.Commands, cliCommand{Name: "help", Args: "[--json] [COMMAND]",
		Purpose: "print the commands, or one command's flags and example; --json: the command line as JSON",
		Example: progName + " help program"})
	return d
}

// versionCmd is the version command.
func versionCmd(fs *flag.FlagSet, out streams) func(context.Context) error {
	asJSON := fs.Bool("json", false, "print one JSON object")
	return func(context.Context) error { return printVersion(out.stdout, out.build, *asJSON) }
}

// printVersion prints the version, commit, Go version and platform.
func printVersion(w io.Writer, b Build, asJSON bool) error {
	v := struct {
		Program  string `json:"program"`
		Version  string `json:"version"`
		Commit   string `json:"commit"`
		Go       string `json:"go"`
		Platform string `json:"platform"`
	}{progName, b.Version, buildCommit(b.Commit), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}
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
