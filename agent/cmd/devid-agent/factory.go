package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"

	"devid/agent/config"
	"devid/agent/logging"
	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/hal/board"
)

func init() {
	register("factory", "serve the factory programming protocol on a serial port", runFactory)
}

// runFactory serves the factory bus until ctx is cancelled (SIGINT or
// SIGTERM). Flags override the config file; without --config the
// built-in defaults apply.
func runFactory(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devid-agent factory", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (TOML); flags below override it")
	port := fs.String("port", "", "serial device the jig is on (config factory.port)")
	baud := fs.Int("baud", 0, "serial line rate (config factory.baud, default 115200)")
	stateDir := fs.String("state", "", "state directory (config state_dir, default /var/lib/devid)")
	keySpec := fs.String("key", "", `key backend: auto, file:PATH or tpm:... (config key.backend, default auto)`)
	deviceID := fs.String("device-id", "", "device ID (config device_id; default: from the board)")
	root := fs.String("root", "", "factory root PEM the certificate must chain to (config factory.root)")
	if err := parseArgsNone(fs, args); err != nil {
		return err
	}

	cfg := config.Default()
	if *cfgPath != "" {
		c, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		cfg = c
	}
	override := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	override(&cfg.Factory.Port, *port)
	override(&cfg.StateDir, *stateDir)
	override(&cfg.Key.Backend, *keySpec)
	override(&cfg.DeviceID, *deviceID)
	override(&cfg.Factory.Root, *root)
	if *baud > 0 {
		cfg.Factory.Baud = *baud
	}
	if cfg.Factory.Port == "" {
		return usageError{errors.New("--port (or factory.port in the config) is required")}
	}
	// "auto" is resolved by the TPM backend; in a build without it the
	// software key in the state dir is the only choice.
	if cfg.Key.Backend == "auto" && !slices.Contains(keys.Backends(), "auto") {
		cfg.Key.Backend = "file:" + keys.DefaultFilePath(cfg.StateDir)
	}

	log := logging.New(logging.Options{Format: cfg.LogFormat, Journal: logging.JournalStream(os.Stderr)}).With("component", "factory")
	id, src, err := board.Reader{Configured: cfg.DeviceID}.DeviceID()
	if err != nil {
		return fmt.Errorf("device ID: %w", err)
	}
	roots, err := certstore.LoadRoots(cfg.Factory.Root)
	if err != nil {
		return fmt.Errorf("%w (set --root or factory.root)", err)
	}
	ks, err := keys.Open(cfg.Key.Backend, cfg.StateDir)
	if err != nil {
		return err
	}
	log.Info("serving factory bus", "port", cfg.Factory.Port, "baud", cfg.Factory.Baud, "device_id", id,
		"id_source", src, "key", ks.Name(), "state_dir", cfg.StateDir)
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(cfg.StateDir, roots), Log: log}
	if err := d.ServePort(ctx, cfg.Factory.Port, cfg.Factory.Baud); err != nil {
		return err
	}
	log.Info("factory bus stopped")
	return nil
}
