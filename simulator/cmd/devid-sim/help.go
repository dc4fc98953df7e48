package main

import (
	"errors"
	"flag"
	"io"
	"slices"
	"strings"

	"devid/hal/cmdline"
	"devid/simulator"
)

// The command-line conventions are hal/cmdline's, shared with devid-agent
// and devid-jig.

const program = "devid-sim"

// exitStatus reports err on stderr and maps it to the exit status. A name
// that is no command is left out of the message.
func exitStatus(err error, stderr io.Writer, name string) int {
	if _, isVerb := lookupVerb(name); !isVerb && name != "serve" && name != "version" && name != "help" {
		name = ""
	}
	return cmdline.Exit(program, name, err, stderr)
}

// help implements help [--json] [COMMAND].
func help(args []string, stdout io.Writer) error { return cmdline.Help(describe(), args, stdout) }

func serveHelp(w io.Writer) { cmdline.CommandHelp(w, program, describe().Commands[0]) }

func verbHelp(w io.Writer, v verb) { cmdline.CommandHelp(w, program, describeVerb(v)) }

func describeVerb(v verb) cmdline.Command {
	fs := flag.NewFlagSet(v.name, flag.ContinueOnError)
	bindFlags(fs)
	return cmdline.Command{Name: v.name, Args: strings.TrimSpace(v.args + " (--state DIR | --control URL)"), Purpose: v.purpose, Example: v.example,
		Flags: cmdline.Flags(fs, func(n string) bool { return n == "state" || n == "control" || slices.Contains(v.flags, n) })}
}

func describe() cmdline.Doc {
	serveFS := flag.NewFlagSet("serve", flag.ContinueOnError)
	simulator.ServeFlags(serveFS)
	d := cmdline.Doc{
		Name: program, Section: 1,
		Summary: "simulator of Azure IoT Hub DPS, IoT Hub and a CA for devid tests",
		Description: "devid-sim serve runs a local Azure IoT Hub Device Provisioning Service, IoT hubs, a CA and an EST " +
			"server over real MQTT and TLS, so that devid agents and factory lines can be tested without a cloud account. " +
			"Switches choose between the variants of the service's behaviour; the control commands enroll devices, " +
			"inject faults, revoke certificates and read telemetry of a running simulator.",
		Note: "The control commands talk to a running simulator: give --state DIR (its ready.json)\nor --control URL.",
		Commands: []cmdline.Command{{Name: "serve", Args: "--state DIR [flags]",
			Purpose: "run the simulator until stopped; prints one JSON ready line (addresses, CA) on stdout",
			Example: "devid-sim serve --state /tmp/sim --hubs hub-a,hub-b",
			Flags:   cmdline.Flags(serveFS, nil)}},
		Files: []cmdline.Item{
			{Name: "STATE/ready.json", Meaning: "the ready line of the running simulator, where the control commands find its control URL"},
		},
		Environment: []cmdline.Item{
			{Name: "DEVID_SIM_STATE", Meaning: "the state directory, when --state is not given"},
			{Name: "DEVID_SIM_CONTROL", Meaning: "the control plane URL, when --control is not given"},
		},
	}
	for _, v := range verbs {
		d.Commands = append(d.Commands, describeVerb(v))
	}
	d.Commands = append(d.Commands, cmdline.VersionCommand(program), cmdline.HelpCommand(program, "fault"))
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
		return cmdline.Usage(err)
	}
	if fs.NArg() > 0 {
		return cmdline.Usagef("unexpected argument %q", fs.Arg(0))
	}
	return cmdline.PrintVersion(stdout, program, version, commit, *asJSON)
}
