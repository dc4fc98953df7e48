package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"devid/agent/config"
)

func init() {
	register("config", "config check: validate the config and print the effective config", runConfig)
}

// runConfig implements `devid-agent config check [--config FILE]`.
func runConfig(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usageError{fmt.Errorf("usage: devid-agent config check [--config FILE]")}
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	path := fs.String("config", config.DefaultPath, "config file")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	c, err := config.Load(*path)
	if err != nil {
		return err
	}
	b, err := c.TOML()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "# effective config (%s is valid)\n", *path)
	os.Stdout.Write(b)
	return nil
}

// loadConfig loads --config for the daemon and the other subcommands.
func loadConfig(path string) (*config.Config, error) {
	return config.Load(path)
}
