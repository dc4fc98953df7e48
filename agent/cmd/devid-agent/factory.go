package main

import (
	"context"
	"errors"
)

func init() {
	register("factory", "serve the factory programming protocol on a serial port", runFactory)
}

func runFactory(ctx context.Context, args []string) error {
	return errors.New("not implemented yet")
}
