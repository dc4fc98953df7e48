package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	"devid/simulator"
)

// The command-line conventions every devid binary follows (devid-agent and
// devid-jig carry the same few functions; the layering of
// docs/architecture.md leaves them no package all three may import: the
// simulator imports neither agent nor enroll):
//   - help, --help, -h and COMMAND --help print to stdout and exit 0;
//   - a usage error prints what was wrong to stderr and exits 2;
//   - version and --version print version, commit, Go version and
//     platform, --json as one JSON object;
//   - help --json prints the command line as JSON: agent/dist makes the
//     man page from it, so the page cannot drift from the binary.

const program = "devid-sim"

// usageError marks a bad command, flag or argument: exit 2 rather than 1.
type usageError struct{ error }

// exitStatus reports err on stderr and maps it to the exit status.
func exitStatus(err error, stderr io.Writer, name string) int {
	if err == nil {
		return 0
	}
	_, isVerb := lookupVerb(name)
	known := isVerb || name == "serve" || name == "version"
	who := program
	if known {
		who += " " + name
	}
	fmt.Fprintf(stderr, "%s: %v\n", who, err)
	var u usageError
	if !errors.As(err, &u) {
		return 1
	}
	hint := program + " help"
	if known {
		hint += " " + name
	}
	fmt.Fprintf(stderr, "run '%s' for usage\n", hint)
	return 2
}

// help implements help [--json] [COMMAND].
func help(args []string, stdout io.Writer) error {
	switch {
	case len(args) == 1 && (args[0] == "--json" || args[0] == "-json"):
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(describe())
	case len(args) == 0:
		d := describe()
		fmt.Fprintf(stdout, "%s: %s\n\nusage: %s <command> [flags]\n\ncommands:\n", program, d.Summary, program)
		for _, c := range d.Commands {
			fmt.Fprintf(stdout, "  %-15s %s\n", c.Name, c.Purpose)
		}
		fmt.Fprintf(stdout, "\nThe control commands talk to a running simulator: give --state DIR (its ready.json)\n"+
			"or --control URL.\nRun '%s help COMMAND' (or '%s COMMAND --help') for its flags and an example.\n", program, program)
		return nil
	case len(args) > 1:
		return usageError{fmt.Errorf("unexpected argument %q", args[1])}
	case args[0] == "-h" || strings.TrimLeft(args[0], "-") == "help":
		args = []string{"help"}
	}
	for _, c := range describe().Commands {
		if c.Name == args[0] {
			commandHelp(stdout, c)
			return nil
		}
	}
	return usageError{fmt.Errorf("unknown command %q", args[0])}
}

func serveHelp(w io.Writer) { commandHelp(w, describe().Commands[0]) }

func verbHelp(w io.Writer, v verb) { commandHelp(w, describeVerb(v)) }

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

// flagsOf lists the flags of fs that keep reports true.
func flagsOf(fs *flag.FlagSet, keep func(name string) bool) []cliFlag {
	var out []cliFlag
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f.Name) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
		def := f.DefValue
		if def == "false" || def == "0" || def == "0s" || def == "[]" {
			def = ""
		} else if strings.ContainsAny(def, " \t") {
			def = fmt.Sprintf("%q", def)
		}
		out = append(out, cliFlag{Name: f.Name, Arg: arg, Usage: usage, Default: def})
	})
	return out
}

func describeVerb(v verb) cliCommand {
	fs := flag.NewFlagSet(v.name, flag.ContinueOnError)
	bindFlags(fs)
	return cliCommand{Name: v.name, Args: strings.TrimSpace(v.args + " (--state DIR | --control URL)"), Purpose: v.purpose, Example: v.example,
		Flags: flagsOf(fs, func(n string) bool { return n == "state" || n == "control" || slices.Contains(v.flags, n) })}
}

func describe() cliDoc {
	serveFS := flag.NewFlagSet("serve", flag.ContinueOnError)
	simulator.ServeFlags(serveFS)
	d := cliDoc{
		Name: program, Section: 1,
		Summary: "simulator of Azure IoT Hub DPS, IoT Hub and a CA for devid tests",
		Description: "devid-sim serve runs a local Azure IoT Hub Device Provisioning Service, IoT hubs, a CA and an EST " +
			"server over real MQTT and TLS, so that devid agents and factory lines can be tested without a cloud account. " +
			"Switches choose between the variants of the service's behaviour; the control commands enroll devices, " +
			"inject faults, revoke certificates and read telemetry of a running simulator.",
		Commands: []cliCommand{{Name: "serve", Args: "--state DIR [flags]",
			Purpose: "run the simulator until stopped; prints one JSON ready line (addresses, CA) on stdout",
			Example: "devid-sim serve --state /tmp/sim --hubs hub-a,hub-b",
			Flags:   flagsOf(serveFS, func(string) bool { return true })}},
		Files: []cliItem{
			{"STATE/ready.json", "the ready line of the running simulator, where the control commands find its control URL"},
		},
		Environment: []cliItem{
			{"DEVID_SIM_STATE", "the state directory, when --state is not given"},
			{"DEVID_SIM_CONTROL", "the control plane URL, when --control is not given"},
		},
	}
	for _, v := range verbs {
		d.Commands = append(d.Commands, describeVerb(v))
	}
	d.Commands = append(d.Commands,
		cliCommand{Name: "version", Args: "[--json]", Purpose: "print the version, commit, Go version and platform",
			Example: program + " version --json", Flags: []cliFlag{{Name: "json", Usage: "print one JSON object"}}},
		cliCommand{Name: "help", Args: "[--json] [COMMAND]",
			Purpose: "print the commands, or one command's flags and example; --json: the command line as JSON",
			Example: program + " help fault"})
	return d
}

// versionCmd implements version [--json].
func versionCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return help([]string{"version"}, stdout)
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	v := struct {
		Program  string `json:"program"`
		Version  string `json:"version"`
		Commit   string `json:"commit"`
		Go       string `json:"go"`
		Platform string `json:"platform"`
	}{program, version, buildCommit(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(v)
	}
	_, err := fmt.Fprintf(stdout, "%s %s\ncommit:   %s\ngo:       %s\nplatform: %s\n", v.Program, v.Version, v.Commit, v.Go, v.Platform)
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
