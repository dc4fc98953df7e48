// Command devid-agent is the on-device identity daemon.
//
// Subcommands each live in their own file; the table below is the whole
// command line (help, help --json and the man page devid-agent(8) are
// made from it):
//
//	run           the daemon (default)          run.go
//	factory       serve the factory bus         factory.go
//	status        print the agent's state       status.go
//	check         aziotctl-style health checks  check.go
//	config check  validate the config           config.go
//	version       print the version             cli.go
//
// Exit status: 0 on success, 1 on failure, 2 on a usage error.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
)

// version and commit are set by -ldflags at build time (the Makefile).
var (
	version = "dev"
	commit  = ""
)

// subcommand is one verb of the command line.
type subcommand struct {
	name    string // one word, or a group and a word ("config check")
	args    string // synopsis after the name
	purpose string // one line
	example string
	// bind defines the command's flags on fs and returns what runs the
	// command once fs has parsed them, with the positional arguments.
	bind func(fs *flag.FlagSet) func(ctx context.Context, args []string) error
	// positional: the command takes arguments after its flags.
	positional bool
	// exit documents the exit status when it says more than 0/1/2.
	exit string
}

// commands is the command line, in the order help lists it. "help" is
// handled before this table (it lists the table).
var commands = []subcommand{
	{name: "run", args: "[--config FILE]", bind: runFlags,
		purpose: "run the daemon: factory bus until programmed, then DPS and the hub (the default command)",
		example: "devid-agent run --config /etc/devid/config.toml"},
	{name: "factory", args: "(--port DEVICE | --usb-gadget) --root FILE [flags]", bind: factoryFlags,
		purpose: "serve only the factory programming protocol on a serial port or a USB serial gadget, until stopped",
		example: "devid-agent factory --port /dev/ttyS1 --root /etc/devid/factory-root.pem"},
	{name: "status", args: "[--config FILE] [--json]", bind: statusFlags,
		purpose: "print the agent's state: from the running agent, else the last state saved in the state files",
		example: "devid-agent status --json", exit: statusExitHelp},
	{name: "check", args: "[--config FILE] [--json] [--offline] [--skip ID,...] [--only ID,...]", bind: checkFlags,
		purpose: "run health checks, each with a stable ID (config, agent running, state dir, key, certificate, clock, DPS and hub reachability, ...)",
		example: "devid-agent check --skip dps-reachable,hub-reachable", exit: checkExitHelp},
	{name: "config check", args: "[--config FILE]", bind: configCheckFlags,
		purpose: "validate the config file and print the effective config (passwords masked)",
		example: "devid-agent config check --config /etc/devid/config.toml"},
	{name: "version", args: "[--json]", bind: versionFlags,
		purpose: "print the version, commit, Go version and platform",
		example: "devid-agent version --json"},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
