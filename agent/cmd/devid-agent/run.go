package main

import (
	"context"
	"errors"
)

func init() {
	register("run", "run the daemon", runDaemon)
}

func runDaemon(ctx context.Context, args []string) error {
	return errors.New("not implemented yet")
}
