package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"devid/agent/config"
	"devid/agent/logging"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/hal/board"
	"devid/hal/cmdline"
)

// factoryFlags is the factory command: it serves the factory bus until
// ctx is cancelled (SIGINT or SIGTERM). Flags override the config file;
// without --config the built-in defaults apply.
func factoryFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	cfgPath := fs.String("config", "", "config `FILE` (TOML); the other flags override it")
	port := fs.String("port", "", "serial `DEVICE` the jig is on (config factory.port)")
	gadget := fs.Bool("usb-gadget", false, "make the board's USB device port a serial gadget (CDC ACM) and serve on its tty instead of --port (config factory.usb_gadget)")
	baud := fs.Int("baud", 0, "serial line rate in `BAUD` (config factory.baud, default 115200)")
	stateDir := fs.String("state", "", "state `DIR` (config state_dir, default /var/lib/devid)")
	keySpec := fs.String("key", "", "key backend `SPEC`: auto, file:PATH or tpm:... (config key.backend, default auto)")
	deviceID := fs.String("device-id", "", "device `ID` (config device_id; default: from the board)")
	root := fs.String("root", "", "factory root PEM `FILE` the certificate must chain to (config factory.root)")
	return func(ctx context.Context, _ []string) error {
		return runFactory(ctx, *cfgPath, factoryOverrides{*port, *gadget, *baud, *stateDir, *keySpec, *deviceID, *root})
	}
}

// factoryOverrides are the factory command's flags; "" or 0 keeps the
// config's value.
type factoryOverrides struct {
	port                              string
	usbGadget                         bool
	baud                              int
	stateDir, keySpec, deviceID, root string
}

func runFactory(ctx context.Context, cfgPath string, f factoryOverrides) error {
	cfg := config.Default()
	if cfgPath != "" {
		c, err := config.Load(cfgPath)
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
	override(&cfg.Factory.Port, f.port)
	override(&cfg.StateDir, f.stateDir)
	override(&cfg.Key.Backend, f.keySpec)
	override(&cfg.DeviceID, f.deviceID)
	if f.deviceID != "" {
		cfg.DeviceIDSource = string(board.SourceConfig)
	}
	override(&cfg.Factory.Root, f.root)
	if f.baud > 0 {
		cfg.Factory.Baud = f.baud
	}
	if f.usbGadget {
		cfg.Factory.USBGadget = true
	}
	switch {
	case cfg.Factory.USBGadget && cfg.Factory.Port != "":
		return cmdline.Usage(errors.New("give --port (factory.port) or --usb-gadget (factory.usb_gadget), not both"))
	case cfg.Factory.Port == "" && !cfg.Factory.USBGadget:
		return cmdline.Usage(errors.New("--port or --usb-gadget (or factory.port or factory.usb_gadget in the config) is required"))
	}
	// "auto" is resolved by the TPM backend; in a build without it the
	// software key in the state dir is the only choice.
	if cfg.Key.Backend == "auto" && !slices.Contains(keys.Backends(), "auto") {
		cfg.Key.Backend = "file:" + keys.DefaultFilePath(cfg.StateDir)
	}

	log := logging.New(logging.Options{Format: cfg.LogFormat, Journal: logging.JournalStream(os.Stderr)}).With("component", "factory")
	id, src, err := board.Reader{Root: boardRoot, Configured: cfg.DeviceID, Source: board.Source(cfg.DeviceIDSource)}.DeviceID()
	if err != nil {
		return fmt.Errorf("device ID (device_id_source %s): %w", cfg.DeviceIDSource, err)
	}
	if err := recordDeviceID(cfg, id, src); err != nil {
		return err
	}
	roots, err := certstore.LoadRoots(cfg.Factory.Root)
	if err != nil {
		return fmt.Errorf("%w (set --root or factory.root)", err)
	}
	ks, err := keys.Open(cfg.Key.Backend, cfg.StateDir)
	if err != nil {
		return err
	}
	port, gadgetDone, err := factoryPort(cfg, id, log)
	if err != nil {
		return err
	}
	defer gadgetDone()
	log.Info("serving factory bus", "port", port, "baud", cfg.Factory.Baud, "device_id", id,
		"id_source", src, "key", ks.Name(), "state_dir", cfg.StateDir)
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(cfg.StateDir, roots), Log: log}
	// A key backend that can prove its key is in a TPM offers attestation
	// on the bus (HELLO attest=1; docs/factory-protocol.md, ATTEST).
	if a, ok := ks.(factory.Attester); ok {
		d.Attester = a
	}
	if err := d.ServePort(ctx, port, cfg.Factory.Baud); err != nil {
		return err
	}
	log.Info("factory bus stopped")
	return nil
}

// boardRoot is where the board's identity files are read ("" is /; tests
// point it at a fake tree).
var boardRoot = ""

// recordDeviceID notes in the state dir where the factory read the device
// ID (device-id.json), so that the agent can warn when the board would
// yield another one later. An unchanged record is left alone.
func recordDeviceID(cfg *config.Config, id string, src board.Source) error {
	d, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	if r, err := d.LoadDeviceID(); err == nil && r.DeviceID == id && r.Source == string(src) && r.Configured == cfg.DeviceIDSource {
		return nil
	}
	return d.SaveDeviceID(&statedir.DeviceIDRecord{DeviceID: id, Source: string(src), Configured: cfg.DeviceIDSource, At: time.Now().UTC()})
}

// checkDeviceIDSource warns when the board now yields another device ID
// from the source the factory recorded than the one it recorded: the
// certificate keeps the factory's ID, but a re-programmed board would get
// the new one (say, a replaced network card behind a MAC-derived ID).
func checkDeviceIDSource(cfg *config.Config, log *slog.Logger) {
	d := &statedir.Dir{Path: cfg.StateDir}
	r, err := d.LoadDeviceID()
	if err != nil {
		return // programmed before device-id.json existed, or not yet
	}
	now, _, err := board.Reader{Root: boardRoot, Configured: cfg.DeviceID, Source: board.Source(r.Source)}.DeviceID()
	switch {
	case err != nil:
		log.Warn("cannot read the device ID source the factory used", "source", r.Source, "factory_device_id", r.DeviceID, "err", err)
	case now != r.DeviceID:
		log.Warn("the board now yields another device ID than the factory recorded; the certificate keeps the factory's",
			"source", r.Source, "factory_device_id", r.DeviceID, "board_device_id", now)
	}
}
