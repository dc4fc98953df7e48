// Command devid-agent is the on-device identity daemon.
//
// Subcommands each live in their own file:
//
//	run       the daemon (default)          run.go
//	factory   serve the factory bus         factory.go
//	status    print the agent's state       status.go
//	check     aziotctl-style health checks  check.go
//	config    config check                  config.go
//	version   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set by -ldflags at build time.
var version = "dev"

// subcommand runs one verb with the arguments after it.
type subcommand struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

var subcommands = map[string]subcommand{}

func register(name, summary string, run func(ctx context.Context, args []string) error) {
	subcommands[name] = subcommand{summary, run}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: devid-agent <command> [flags]\n\ncommands:\n")
	for _, name := range []string{"run", "factory", "status", "check", "config", "version"} {
		if c, ok := subcommands[name]; ok {
			fmt.Fprintf(os.Stderr, "  %-8s %s\n", name, c.summary)
		}
	}
}

func main() {
	register("version", "print the version", func(context.Context, []string) error {
		fmt.Println(version)
		return nil
	})
	args := os.Args[1:]
	name := "run"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name == "help" || name == "-h" || name == "--help" {
		usage()
		return
	}
	cmd, ok := subcommands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "devid-agent: unknown command %q\n", name)
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "devid-agent %s: %v\n", name, err)
		os.Exit(exitCode(err))
	}
}

// parseFlags parses args into fs. -h comes back as flag.ErrHelp (the
// flag package has printed the usage; exit 2 without more); any other
// flag error is a usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}

// parseArgsNone is parseFlags for a command that takes no positional
// arguments.
func parseArgsNone(fs *flag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// usageError marks a bad flag or argument, which exits 2 rather than 1.
type usageError struct{ error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}
