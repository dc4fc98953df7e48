package cli

import (
	"context"
	"errors"
	"flag"
	"io"

	"devid/hal/cmdline"
)

// The command-line conventions are hal/cmdline's, shared with
// devid-agent and devid-sim.

const progName = "devid-jig"

// Build is what the binary was built from (set by -ldflags in its main).
type Build struct {
	Version string
	Commit  string // "": the commit the go command stamped, if any
}

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
			cmdline.CommandHelp(stdout, progName, describeCommand(c))
			return 0
		}
		return exitStatus(cmdline.Usage(err), stderr, c.name)
	}
	if fs.NArg() > 0 {
		return exitStatus(cmdline.Usagef("unexpected argument %q", fs.Arg(0)), stderr, c.name)
	}
	for _, r := range c.required {
		if f := fs.Lookup(r); f == nil || f.Value.String() == "" {
			return exitStatus(cmdline.Usagef("--%s is required", r), stderr, c.name)
		}
	}
	return exitStatus(run(ctx), stderr, c.name)
}

// lookup finds the command args start with
func lookup(args []string) (command, []string, error) {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	i, rest, err := cmdline.Lookup(names, args)
	if err != nil {
		return command{}, nil, err
	}
	return commands[i], rest, nil
}

// exitStatus reports err on stderr and maps it to the exit status.
func exitStatus(err error, stderr io.Writer, name string) int {
	return cmdline.Exit(progName, name, err, stderr)
}

// help implements help [--json] [COMMAND].
func help(args []string, stdout io.Writer) error { return cmdline.Help(describe(), args, stdout) }

func describeCommand(c command) cmdline.Command {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.bind(fs, streams{io.Discard, io.Discard, Build{}})
	return cmdline.Command{Name: c.name, Args: c.args, Purpose: c.purpose, Example: c.example, Flags: cmdline.Flags(fs, nil)}
}

func describe() cmdline.Doc {
	d := cmdline.Doc{
		Name: progName, Section: 1,
		Summary: "factory station tool for devid boards",
		Description: "devid-jig runs on the factory test station. Over the board's serial line it asks the devid agent " +
			"for a certificate request carrying the device ID, has the factory CA sign it (a local CA directory or an " +
			"EST server), installs the certificate and checks that the board stored it. It also keeps the local CA: " +
			"its policy, the ledger of every issuance and the CRL.",
		Files: []cmdline.Item{
			{Name: "CA_DIR/root.pem", Meaning: "the factory root certificate: devices get it as factory.root"},
			{Name: "CA_DIR/ledger.jsonl", Meaning: "one line for every certificate issued or revoked"},
			{Name: "CA_DIR/crl.pem", Meaning: "the certificate revocation list"},
		},
	}
	for _, c := range commands {
		d.Commands = append(d.Commands, describeCommand(c))
	}
	d.Commands = append(d.Commands, cmdline.HelpCommand(progName, "program"))
	return d
}

// versionCmd is the version command.
func versionCmd(fs *flag.FlagSet, out streams) func(context.Context) error {
	asJSON := fs.Bool("json", false, "print one JSON object")
	return func(context.Context) error {
		return cmdline.PrintVersion(out.stdout, progName, out.build.Version, out.build.Commit, *asJSON)
	}
}
