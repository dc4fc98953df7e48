// Command devid-sim runs the Azure DPS, IoT Hub and CA simulator
// (`devid-sim serve`) and drives its control plane (every other verb, see
// verbs.go). See docs/simulator.md.
//
// The verb table (verbs.go) and serve's flags are the whole command line:
// help, help --json and the man page devid-sim(1) are made from them
// (help.go). Exit status: 0 on success, 1 on failure, 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"devid/hal/cmdline"
	"devid/simulator"
)

// version and commit are set by -ldflags at build time (the Makefile).
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs devid-sim with args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return exitStatus(cmdline.Usage(errors.New("no command")), stderr, "")
	}
	name, rest := args[0], args[1:]
	var err error
	switch name {
	case "help", "-h", "-help", "--help":
		return exitStatus(help(rest, stdout), stderr, "help")
	case "version", "--version", "-version":
		name = "version"
		err = versionCmd(rest, stdout)
	case "serve":
		err = serve(rest, stdout, stderr)
	default:
		err = control(name, rest, stdout)
	}
	return exitStatus(err, stderr, name)
}

// serve runs the simulator until SIGINT or SIGTERM. The ready line goes to
// stdout and to STATE/ready.json, where the control verbs find it.
func serve(args []string, stdout, stderr io.Writer) error {
	cfg, err := simulator.ParseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		serveHelp(stdout)
		return nil
	}
	if err != nil {
		return cmdline.Usage(errors.New(strings.TrimPrefix(err.Error(), "serve: ")))
	}
	sim, err := simulator.Start(cfg)
	if err != nil {
		return err
	}
	line, err := sim.WriteReady(os.Getpid())
	if err != nil {
		sim.Close()
		return fmt.Errorf("write ready.json: %w", err)
	}
	fmt.Fprintln(stdout, string(line))
	ready := sim.Ready()
	cfg.Logger.Info("devid-sim ready", "state", cfg.StateDir, "dps", ready.DPS.Addr, "control", ready.ControlURL)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return sim.Close()
}
