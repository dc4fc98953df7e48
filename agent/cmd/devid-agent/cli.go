package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// The command-line conventions every devid binary follows (devid-jig and
// devid-sim carry the same few functions; the layering of docs/architecture.md
// leaves them no package all three may import):
//   - help, --help, -h and COMMAND --help print to stdout and exit 0;
//   - a usage error prints what was wrong to stderr and exits 2;
//   - version and --version print version, commit, Go version and
//     platform, --json as one JSON object;
//   - help --json prints the command line as JSON: agent/dist makes the
//     man page from it, so the page cannot drift from the binary.

const program = "devid-agent"

// usageError marks a bad command, flag or argument: exit 2 rather than 1.
type usageError struct{ error }

// dispatch runs the command args name and returns the exit status.
func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "help", "-h", "-help", "--help":
			return exitStatus(help(args[1:], stdout), stderr, "help")
		case "--version", "-version":
			args[0] = "version"
		}
	}
	c, rest, err := lookup(args)
	if err != nil {
		return exitStatus(err, stderr, "")
	}
	fs := flag.NewFlagSet(program+" "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, help goes to stdout
	run := c.bind(fs)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandHelp(stdout, describeCommand(c))
			return 0
		}
		return exitStatus(usageError{err}, stderr, c.name)
	}
	if !c.positional && fs.NArg() > 0 {
		return exitStatus(usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}, stderr, c.name)
	}
	return exitStatus(run(ctx, fs.Args()), stderr, c.name)
}

// lookup finds the command args start with; no command (or a flag first)
// is "run".
func lookup(args []string) (subcommand, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"run"}, args...)
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
		return subcommand{}, nil, usageError{fmt.Errorf("%q needs a subcommand: %s", args[0], strings.Join(group, ", "))}
	}
	return subcommand{}, nil, usageError{fmt.Errorf("unknown command %q", args[0])}
}

// exitStatus reports err on stderr and maps it to the exit status.
func exitStatus(err error, stderr io.Writer, name string) int {
	if err == nil {
		return 0
	}
	var u usageError
	if errors.As(err, &u) {
		fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(program+" "+name), err)
		hint := program + " help"
		if name != "" && name != "help" {
			hint += " " + name
		}
		fmt.Fprintf(stderr, "run '%s' for usage\n", hint)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(program+" "+name), err)
	return 1
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
		fmt.Fprintf(stdout, "%s: %s\n\nusage: %s <command> [flags]\n\ncommands:\n", program, d.Summary, program)
		for _, c := range d.Commands {
			fmt.Fprintf(stdout, "  %-14s %s\n", c.Name, c.Purpose)
		}
		fmt.Fprintf(stdout, "\nRun '%s help COMMAND' (or '%s COMMAND --help') for its flags and an example.\n", program, program)
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
	fmt.Fprintf(w, "usage: %s %s %s\n\n%s\n\nexample:\n  %s\n", program, d.Name, d.Args, d.Purpose, d.Example)
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

func describeCommand(c subcommand) cliCommand {
	out := cliCommand{Name: c.name, Args: c.args, Purpose: c.purpose, Example: c.example}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.bind(fs)
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
		Name: program, Section: 8,
		Summary: "device identity agent for Azure IoT Hub DPS",
		Description: "devid-agent gives a Linux board its own identity. On the factory test jig it makes the device key " +
			"(inside the TPM 2.0 where the board has one, in software otherwise) and answers the jig over a serial line " +
			"with a certificate request carrying the device ID; it checks and stores the certificate the jig installs. " +
			"It then registers with Azure IoT Hub Device Provisioning Service over MQTT with that certificate, connects " +
			"to the assigned hub, keeps the connection up and renews the credential before it expires. " +
			"It runs as the systemd service devid-agent.service; systemctl reload applies a changed log_level.",
		Files: []cliItem{
			{"/etc/devid/config.toml", "the configuration (every key, commented, with its default)"},
			{"/var/lib/devid", "the state directory: key or TPM key reference, certificate chain, assignment, queue"},
			{"/run/devid/api.sock", "the local API socket that status and check ask the running agent on"},
		},
		Environment: []cliItem{
			{"JOURNAL_STREAM", "set by systemd: log lines carry the journald priority prefix"},
			{"NOTIFY_SOCKET", "set by systemd: readiness, status text and watchdog pings"},
		},
	}
	for _, c := range commands {
		d.Commands = append(d.Commands, describeCommand(c))
	}
	d.Commands = append(d.Commands, cliCommand{Name: "help", Args: "[--json] [COMMAND]",
		Purpose: "print the commands, or one command's flags and example; --json: the command line as JSON",
		Example: program + " help status"})
	return d
}

// versionFlags is the version command.
func versionFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	asJSON := fs.Bool("json", false, "print one JSON object")
	return func(_ context.Context, _ []string) error { return printVersion(os.Stdout, *asJSON) }
}

// printVersion prints the version, commit, Go version and platform.
func printVersion(w io.Writer, asJSON bool) error {
	v := struct {
		Program  string `json:"program"`
		Version  string `json:"version"`
		Commit   string `json:"commit"`
		Go       string `json:"go"`
		Platform string `json:"platform"`
	}{program, version, buildCommit(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	_, err := fmt.Fprintf(w, "%s %s\ncommit:   %s\ngo:       %s\nplatform: %s\n", v.Program, v.Version, v.Commit, v.Go, v.Platform)
	return err
}

// buildCommit is the commit -ldflags set, else the one the go command
// stamped (a plain go build in a checkout), else "unknown".
func buildCommit() string {
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
