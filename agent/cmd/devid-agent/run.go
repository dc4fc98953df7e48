package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"syscall"
	"time"

	"devid/agent"
	"devid/agent/config"
	"devid/agent/localapi"
	"devid/agent/logging"
	"devid/agent/sdnotify"
	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	_ "devid/enroll/keys/tpmkey" // registers the "tpm" and "auto" key backends
	"devid/enroll/rotate"
	"devid/hal/board"
	"devid/hal/clock"
	"devid/hal/serial"
)

func runFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	cfgPath := fs.String("config", config.DefaultPath, "config `FILE` (TOML)")
	return func(ctx context.Context, _ []string) error { return runDaemon(ctx, *cfgPath) }
}

func runDaemon(ctx context.Context, cfgPath string) error {
	// systemctl reload sends SIGHUP; caught from the start so that an early
	// reload never kills the agent (SIGHUP's default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, degraded, err := loadConfigOrLKG(cfgPath)
	if err != nil {
		return err
	}
	effective, err := cfg.TOML() // before run-time resolution, for the last-known-good copy
	if err != nil {
		return err
	}
	tuneMemory()
	resolveKeySpec(cfg)
	level := new(slog.LevelVar)
	log := newLogger(cfg, level)
	notify := sdnotify.FromEnv()
	if degraded != "" {
		log.Error("config file invalid; running with the last-known-good config (fix it: devid-agent config check)", "config", degraded)
	}

	clk := clock.System
	if p := os.Getenv(clockFileEnv); p != "" {
		if cfg.Debug.AllowClockOverride {
			clk = &fileClock{path: p}
			log.Warn("clock override active (debug.allow_clock_override)", "file", p)
		} else {
			log.Warn("ignoring " + clockFileEnv + ": debug.allow_clock_override is not set")
		}
	}

	checkDeviceIDSource(cfg, log)

	// A credential rotation cut short by a power loss is resolved before
	// the credential is loaded.
	if rec, err := rotate.Recover(cfg.StateDir, log); err != nil {
		log.Error("rotation recovery", "err", err)
	} else if rec.Action != "none" {
		log.Warn("rotation recovered", "action", rec.Action)
	}

	cloud, err := agent.NewDPSCloud(cfg, clk, log.With("component", "dps"), version)
	if err != nil {
		return err
	}
	opt := agent.Options{
		Config:      cfg,
		Version:     version,
		Logger:      log,
		Clock:       clk,
		Identity:    agent.StoreIdentity{KeySpec: cfg.Key.Backend, StateDir: cfg.StateDir},
		Cloud:       cloud,
		ClockSynced: clockSynced,
		OnState: func(s agent.Status) {
			notify.Status(statusLine(s))
		},
		ConfigDegraded: degraded,
	}
	if cfg.Factory.Port != "" || cfg.Factory.USBGadget {
		opt.Factory = func(ctx context.Context) error { return serveFactoryBus(ctx, cfg, clk, log) }
	}
	if hw := openHardware(cfg, log); hw != nil {
		defer hw.Close()
		opt.Indicator = hw.Show
		opt.Button = hw.Button()
	}
	a, err := agent.New(opt)
	if err != nil {
		return err
	}
	if degraded == "" {
		// This config started the agent: keep it for the day a bad one
		// is pushed.
		if err := saveLKG(cfg.StateDir, effective); err != nil {
			log.Warn("cannot save the last-known-good config", "err", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var apiDone chan struct{}
	if cfg.LocalAPI.Socket != "" {
		srv, err := localapi.Listen(localapi.Options{
			Path: cfg.LocalAPI.Socket, Group: cfg.LocalAPI.Group,
			MaxMessage: cfg.LocalAPI.MaxMessage, MaxClients: cfg.LocalAPI.MaxClients,
			MaxClientsPerUID: cfg.LocalAPI.MaxClientsPerUID, IdleTimeout: cfg.LocalAPI.IdleTimeout.D(), Logger: log,
		}, a)
		if err != nil {
			// The cloud side must not depend on the local API.
			log.Error("local API unavailable; the agent runs without it", "err", err)
		} else {
			a.SetLocal(srv)
			apiDone = make(chan struct{})
			go func() { srv.Serve(ctx); close(apiDone) }()
		}
	}
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	go reloadOnHUP(ctx, hup, cfgPath, level, log)
	notify.Ready()
	if iv, err := sdnotify.WatchdogInterval(); err != nil {
		log.Warn("watchdog", "err", err)
	} else if iv > 0 {
		go petWatchdog(ctx, a, notify, iv, log)
	}
	err = <-runDone
	notify.Stopping()
	cancel()
	if apiDone != nil {
		<-apiDone
	}
	return err
}

// tuneMemory keeps the daemon small on small boards: a lower GC target
// and a soft limit on the runtime's memory, and one P. The limit sits
// well above the idle heap (about 2 MiB): a 7 MiB limit made the GC run
// all the time under telemetry load (three quarters of the agent's CPU
// in the collector; docs/benchmarks.md), 16 MiB does not. One P: the
// agent is I/O-bound, and every P keeps its own partly used span per
// size class and its own stack and GC caches (scripts/bench.d/agent.sh:
// about 0.5 MiB less RSS idle, 0.3 MiB less under telemetry load, same
// message rate). GOGC / GOMEMLIMIT / GOMAXPROCS in the environment
// override these.
func tuneMemory() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(16 << 20)
	}
}

// petWatchdog pets systemd's watchdog only while the state goroutine
// answers, so a wedged agent is restarted.
func petWatchdog(ctx context.Context, a *agent.Agent, n *sdnotify.Notifier, iv time.Duration, log *slog.Logger) {
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, iv)
		ok := a.Alive(pctx)
		cancel()
		if ok {
			n.Watchdog()
		} else if ctx.Err() == nil {
			log.Error("state loop did not answer; not petting the watchdog")
		}
	}
}

func statusLine(s agent.Status) string {
	line := s.State
	if s.Config != "" {
		line = "config degraded (last-known-good in use); " + line
	}
	if s.Hub != "" {
		line += " hub=" + s.Hub
	}
	if s.DeviceID != "" {
		line += " device=" + s.DeviceID
	}
	if s.LastError != "" && s.State != "connected" {
		line += " last_error=" + s.LastError
	}
	return line
}

// newLogger logs to stderr in the configured format, with journald's
// priority prefixes when stderr is the journal (agent/logging).
func newLogger(cfg *config.Config, level *slog.LevelVar) *slog.Logger {
	if l, err := logging.ParseLevel(cfg.LogLevel); err == nil {
		level.Set(l)
	}
	return logging.New(logging.Options{Format: cfg.LogFormat, Level: level, W: os.Stderr, Journal: logging.JournalStream(os.Stderr)})
}

// reloadOnHUP applies the config file's log_level on SIGHUP (systemctl
// reload devid-agent) without a restart. Other settings need a restart;
// an invalid file changes nothing and says why.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, path string, level *slog.LevelVar, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		c, err := config.Load(path)
		if err != nil {
			log.Error("reload: config invalid; log level unchanged", "err", err, "log_level", level.Level().String())
			continue
		}
		l, _ := logging.ParseLevel(c.LogLevel)
		old := level.Level()
		level.Set(l)
		log.Info("reload: log level applied (other settings take effect on restart)", "log_level", l.String(), "was", old.String())
	}
}

// resolveKeySpec applies the "auto" fallback of a build without the TPM
// backend: the software key in the state directory.
func resolveKeySpec(cfg *config.Config) {
	if cfg.Key.Backend == "auto" && !slices.Contains(keys.Backends(), "auto") {
		cfg.Key.Backend = "file:" + keys.DefaultFilePath(cfg.StateDir)
	}
}

// clockSynced asks the kernel whether NTP has synchronised the clock
// (adjtimex: TIME_ERROR means unsynchronised).
func clockSynced() bool {
	var tx syscall.Timex
	state, err := syscall.Adjtimex(&tx)
	return err == nil && state != 5 // TIME_ERROR
}

// serveFactoryBus runs the factory device side on factory.port (or the
// USB gadget's tty) until ctx ends, reopening the port when the jig's
// adapter goes away or the line is hung up; the gadget is removed when
// it returns (programmed, or the agent stopping).
func serveFactoryBus(ctx context.Context, cfg *config.Config, clk clock.Clock, log *slog.Logger) error {
	log = log.With("component", "factory")
	id, src, err := board.Reader{Configured: cfg.DeviceID}.DeviceID()
	if err != nil {
		return fmt.Errorf("device ID: %w", err)
	}
	roots, err := certstore.LoadRoots(cfg.Factory.Root)
	if err != nil {
		return fmt.Errorf("factory.root: %w", err)
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
	log.Info("serving factory bus", "port", port, "device_id", id, "id_source", src, "key", ks.Name())
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(cfg.StateDir, roots), Log: log}
	// A key backend that can prove its key is in a TPM offers attestation
	// on the bus (HELLO attest=1; docs/factory-protocol.md, ATTEST).
	if a, ok := ks.(factory.Attester); ok {
		d.Attester = a
	}
	for ctx.Err() == nil {
		p, err := serial.Open(port, cfg.Factory.Baud)
		if err != nil {
			log.Warn("factory port", "err", err)
		} else {
			err = d.Serve(ctx, p)
			p.Close()
			if ctx.Err() == nil {
				log.Warn("factory bus failed; reopening", "err", err)
			}
		}
		clock.Sleep(ctx, clk, time.Second)
	}
	return nil
}
