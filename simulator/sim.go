package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"devid/simulator/simapi"
)

// Sim is a running simulator: the DPS and hub services on one MQTT
// broker, the control plane and EST over HTTP, all over one registry
// persisted in the state directory.
type Sim struct {
	cfg Config
	log *slog.Logger
	// PKI holds the server and issuing CAs (EST signs with the latter).
	PKI *PKI

	db     *store
	reg    *registry
	conns  *connTable
	faults *faultSet
	tel    *telemetryLog
	dps    *dpsService
	hub    *hubService

	broker    *mqtt.Server
	ready     simapi.Ready
	listeners []net.Listener
	open      *openConns // every accepted connection, ended by Close
	httpSrvs  []*http.Server
	closed    atomic.Bool
}

// Start opens the state, creates the PKI on first start, starts every
// listener and returns when all are accepting. Close stops it.
func Start(cfg Config) (*Sim, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if err := prepareStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	s := &Sim{cfg: cfg, log: cfg.Logger, conns: newConnTable(), faults: newFaultSet(), open: newOpenConns()}
	if s.PKI, err = LoadOrCreatePKI(cfg.StateDir, cfg.serverNames(), cfg.ServerKey); err != nil {
		return nil, fmt.Errorf("PKI: %w", err)
	}
	if s.db, err = openStore(cfg.StateDir); err != nil {
		return nil, err
	}
	s.reg = newRegistry(s.db, cfg.Hubs)
	if err := s.reg.load(); err != nil {
		s.db.close()
		return nil, fmt.Errorf("load state: %w", err)
	}
	s.wire()
	if err := s.startBroker(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.startHTTP(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// prepareStateDir creates dir 0700, or tightens it: it holds CA keys.
func prepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state dir %s is mode %o and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
		}
	}
	return nil
}

// wire builds the services over the registry.
func (s *Sim) wire() {
	iss := &issuer{pki: s.PKI, curves: s.cfg.Switches.CSRCurves, validity: s.cfg.IssuedValidity}
	s.tel = newTelemetryLog(s.db, s.cfg.TelemetryMax)
	s.dps = &dpsService{cfg: s.cfg, log: s.log, reg: s.reg, faults: s.faults, issuer: iss, pollHist: map[string][]time.Time{}}
	s.hub = &hubService{sw: s.cfg.Switches, log: s.log, reg: s.reg, conns: s.conns, faults: s.faults, pki: s.PKI,
		issuer: iss, tel: s.tel, methods: map[string]chan methodResult{}, credOps: map[string]*credOp{}}
}

// StartArgs starts a simulator in this process from `devid-sim serve`
// flags (ParseFlags), logging to logOut. It is what devid-sim runs, for
// tests that want the simulator without a subprocess.
func StartArgs(args []string, logOut io.Writer) (*Sim, error) {
	cfg, err := ParseFlags(args, logOut)
	if err != nil {
		return nil, err
	}
	return Start(cfg)
}

// Ready returns the ready-line data.
func (s *Sim) Ready() simapi.Ready { return s.ready }

// Config returns the effective configuration.
func (s *Sim) Config() Config { return s.cfg }

// WriteReady writes the ready line with pid to STATE/ready.json, where the
// devid-sim control verbs find the control plane, and returns the line.
func (s *Sim) WriteReady(pid int) ([]byte, error) {
	r := s.ready
	r.PID = pid
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return line, WriteFileAtomic(filepath.Join(s.cfg.StateDir, "ready.json"), append(line, '\n'), 0o600)
}

// Close stops every listener and closes the state database.
func (s *Sim) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, h := range s.httpSrvs {
		_ = h.Shutdown(ctx)
	}
	for _, l := range s.listeners {
		_ = l.Close()
	}
	s.open.closeAll()
	if s.broker != nil {
		_ = s.broker.Close()
	}
	if s.tel != nil {
		s.tel.wake()
	}
	if s.db != nil {
		return s.db.close()
	}
	return nil
}

// UpdateDesired merges patch into a device's desired properties (replace:
// replaces them) and tags, and pushes the change to the device if it is
// connected and subscribed.
func (s *Sim) UpdateDesired(hub, deviceID string, patch map[string]any, tags map[string]any, replace bool) (TwinState, error) {
	return s.hub.updateDesired(hub, deviceID, patch, tags, replace)
}

// InvokeMethod calls a direct method and waits for the device's answer.
func (s *Sim) InvokeMethod(hub, deviceID, name string, payload json.RawMessage, timeout, connectTimeout time.Duration) (int, json.RawMessage, error) {
	return s.hub.invokeMethod(hub, deviceID, name, payload, timeout, connectTimeout)
}

// SendC2D queues a cloud-to-device message and delivers it if possible.
func (s *Sim) SendC2D(hub, deviceID string, m C2DMessage) (C2DMessage, int, error) {
	return s.hub.sendC2D(hub, deviceID, m)
}
