package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"strings"

	"devid/hal/cmdline"
)

// The command-line conventions are hal/cmdline's, shared with devid-jig
// and devid-sim.

const program = "devid-agent"

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
			cmdline.CommandHelp(stdout, program, describeCommand(c))
			return 0
		}
		return exitStatus(cmdline.Usage(err), stderr, c.name)
	}
	if !c.positional && fs.NArg() > 0 {
		return exitStatus(cmdline.Usagef("unexpected argument %q", fs.Arg(0)), stderr, c.name)
	}
	return exitStatus(run(ctx, fs.Args()), stderr, c.name)
}

// lookup finds the command args start with; no command (or a flag first)
// is "run".
func lookup(args []string) (subcommand, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"run"}, args...)
	}
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	i, rest, err := cmdline.Lookup(names, args)
	if err != nil {
		return subcommand{}, nil, err
	}
	return commands[i], rest, nil
}

// exitStatus reports err on stderr and maps it to the exit status.
func exitStatus(err error, stderr io.Writer, name string) int {
	return cmdline.Exit(program, name, err, stderr)
}

// help implements help [--json] [COMMAND].
func help(args []string, stdout io.Writer) error { return cmdline.Help(describe(), args, stdout) }

func describeCommand(c subcommand) cmdline.Command {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.bind(fs)
	return cmdline.Command{Name: c.name, Args: c.args, Purpose: c.purpose, Example: c.example, Flags: cmdline.Flags(fs, nil), Exit: c.exit}
}

func describe() cmdline.Doc {
	d := cmdline.Doc{
		Name: program, Section: 8,
		Summary: "device identity agent for Azure IoT Hub DPS",
		Description: "devid-agent gives a Linux board its own identity. On the factory test jig it makes the device key " +
			"(inside the TPM 2.0 where the board has one, in software otherwise) and answers the jig over a serial line " +
			"with a certificate request carrying the device ID; it checks and stores the certificate the jig installs. " +
			"It then registers with Azure IoT Hub Device Provisioning Service over MQTT with that certificate, connects " +
			"to the assigned hub, keeps the connection up and renews the credential before it expires. " +
			"It runs as the systemd service devid-agent.service; systemctl reload applies a changed log_level.",
		Files: []cmdline.Item{
			{Name: "/etc/devid/config.toml", Meaning: "the configuration (every key, commented, with its default)"},
			{Name: "/var/lib/devid", Meaning: "the state directory: key or TPM key reference, certificate chain, assignment, queue"},
			{Name: "/run/devid/api.sock", Meaning: "the local API socket that status and check ask the running agent on"},
		},
		Environment: []cmdline.Item{
			{Name: "JOURNAL_STREAM", Meaning: "set by systemd: log lines carry the journald priority prefix"},
			{Name: "NOTIFY_SOCKET", Meaning: "set by systemd: readiness, status text and watchdog pings"},
		},
	}
	for _, c := range commands {
		d.Commands = append(d.Commands, describeCommand(c))
	}
	d.Commands = append(d.Commands, cmdline.HelpCommand(program, "status"))
	return d
}

// versionFlags is the version command.
func versionFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	asJSON := fs.Bool("json", false, "print one JSON object")
	return func(_ context.Context, _ []string) error { return printVersion(os.Stdout, *asJSON) }
}

// printVersion prints the version, commit, Go version and platform.
func printVersion(w io.Writer, asJSON bool) error {
	return cmdline.PrintVersion(w, program, version, commit, asJSON)
}
