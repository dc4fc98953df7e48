// Command devid-jig is the factory test jig: it runs the local CA and
// programs boards over the factory serial bus. The commands live in
// enroll/station/cli; `devid-jig help` lists them.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"devid/enroll/station/cli"
)

// version and commit are set by -ldflags at build time (the Makefile).
var (
	version = "dev"
	commit  = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, cli.Build{Version: version, Commit: commit}, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
