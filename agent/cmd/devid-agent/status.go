package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"text/tabwriter"
	"time"

	"devid/agent"
	"devid/agent/config"
	"devid/agent/queue"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/enroll/rotate"
)

type statusOut struct {
	agent.Status
	// Source says where the status came from: the running agent's local
	// API, or the state files (agent not running or API disabled).
	Source string `json:"source"`
}

func statusFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	cfgPath := fs.String("config", config.DefaultPath, "config `FILE` (TOML)")
	asJSON := fs.Bool("json", false, "print JSON")
	return func(ctx context.Context, _ []string) error { return runStatus(ctx, *cfgPath, *asJSON) }
}

func runStatus(ctx context.Context, cfgPath string, asJSON bool) error {
	cfg, degraded, err := loadConfigOrLKG(cfgPath)
	if err != nil {
		return err
	}
	out, err := liveStatus(ctx, cfg)
	if err != nil {
		out, err = fileStatus(cfg)
		if err != nil {
			return err
		}
		out.Config = degraded
	}
	if out.Extra == nil {
		out.Extra = map[string]any{}
	}
	out.Extra["renewal"] = renewalOf(cfg, out.Extra)
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printStatus(out)
	return nil
}

// liveStatus asks the running agent over the local API.
func liveStatus(ctx context.Context, cfg *config.Config) (*statusOut, error) {
	if cfg.LocalAPI.Socket == "" {
		return nil, errors.New("local API disabled")
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "unix", cfg.LocalAPI.Socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return nil, fmt.Errorf("no reply from %s", cfg.LocalAPI.Socket)
	}
	var rep struct {
		OK     bool
		Error  string
		Status *agent.Status
	}
	if err := json.Unmarshal(sc.Bytes(), &rep); err != nil || !rep.OK || rep.Status == nil {
		return nil, fmt.Errorf("bad status reply: %v %s", err, rep.Error)
	}
	return &statusOut{Status: *rep.Status, Source: "agent (" + cfg.LocalAPI.Socket + ")"}, nil
}

// fileStatus builds the status from the state directory.
func fileStatus(cfg *config.Config) (*statusOut, error) {
	out := &statusOut{Source: "state files (agent not answering on the local API)"}
	d := &statedir.Dir{Path: cfg.StateDir}
	if _, err := os.Stat(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := d.LoadState()
	switch {
	case err == nil:
		out.State, out.Since, out.LastError = st.Name, st.Since, st.LastError
		out.HubFailures, out.LastProvision = st.HubFailures, st.LastProvision
	case errors.Is(err, statedir.ErrNotExist):
		out.State = "unknown (never run)"
	default:
		out.State = "unknown"
		out.LastError = err.Error()
	}
	if as, err := d.LoadAssignment(); err == nil {
		out.Hub, out.DeviceID = as.Hub, as.DeviceID
	}
	if ch, err := certstore.Open(cfg.StateDir, nil).Load(); err == nil {
		out.CertExpiry, out.CertSerial = ch.NotAfter(), ch.Serial()
		if out.DeviceID == "" {
			out.DeviceID = ch.Leaf.Subject.CommonName
		}
	}
	if qs, err := queue.Inspect(d.File(statedir.QueueDir)); err == nil {
		out.Queue = agent.QueueInfoFrom(qs)
	}
	return out, nil
}

func printStatus(s *statusOut) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "%s:\t%s\n", k, v)
	}
	state := s.State
	if !s.Since.IsZero() {
		state += fmt.Sprintf(" (since %s)", s.Since.Format(time.RFC3339))
	}
	row("state", state)
	if s.Config != "" {
		row("config", s.Config)
	}
	if s.StateDirError != "" {
		row("state dir", "DEGRADED: cannot write ("+s.StateDirError+"); running with the state in memory, a restart loses what changed")
	}
	row("device id", s.DeviceID)
	row("hub", s.Hub)
	if !s.CertExpiry.IsZero() {
		v := fmt.Sprintf("%s (%s)", s.CertExpiry.Format(time.RFC3339), humanUntil(time.Until(s.CertExpiry)))
		if s.CertKind != "" {
			v += ", the " + s.CertKind + " certificate the hub gets"
		}
		row("cert expiry", v)
		if !s.FactoryCertExpiry.IsZero() {
			row("factory cert", fmt.Sprintf("expires %s (%s); DPS gets it", s.FactoryCertExpiry.Format(time.RFC3339), humanUntil(time.Until(s.FactoryCertExpiry))))
		}
	} else {
		row("cert expiry", "")
	}
	row("key backend", s.KeyBackend)
	row("queue", queueLine(s.Queue))
	if s.ClockWait != nil {
		row("clock wait", fmt.Sprintf("since %s: %s", s.ClockWait.Since.Format(time.RFC3339), s.ClockWait.Reason))
	}
	if !s.NextRetry.IsZero() {
		row("next retry", s.NextRetry.Format(time.RFC3339))
	}
	if p := s.LastProvision; p != nil {
		v := fmt.Sprintf("%s at %s", p.Result, p.At.Format(time.RFC3339))
		if p.Error != "" {
			v += ": " + p.Error
		}
		row("last provisioning", v)
	}
	if r, ok := s.Extra["renewal"].(rotate.Status); ok {
		printRenewal(row, r)
	}
	row("hub failures", fmt.Sprint(s.HubFailures))
	row("last error", s.LastError)
	if s.Version != "" {
		row("version", s.Version+", up "+s.Uptime)
	}
	row("source", s.Source)
	w.Flush()
}

// humanUntil renders a time to expiry in days or hours.
func humanUntil(d time.Duration) string {
	switch {
	case d < 0:
		return "EXPIRED"
	case d >= 48*time.Hour:
		return fmt.Sprintf("in %d days", int(d.Hours()/24))
	default:
		return fmt.Sprintf("in %s", d.Truncate(time.Minute))
	}
}

// queueLine is the status line of the telemetry queue: what waits, and
// every message that did not or will not reach the hub.
func queueLine(q agent.QueueInfo) string {
	line := fmt.Sprintf("%d messages waiting, %d bytes, %d dropped", q.Depth, q.Bytes, q.Dropped)
	if q.Corrupt > 0 {
		line += fmt.Sprintf(", %d damaged and skipped", q.Corrupt)
	}
	if q.SetAside > 0 {
		line += fmt.Sprintf(", %d refused by the hub and set aside (queue/setaside.log)", q.SetAside)
	}
	if q.CursorSetAside != "" {
		line += fmt.Sprintf("; the damaged ack cursor was moved to %s", q.CursorSetAside)
	}
	if q.DiskError != "" {
		line += fmt.Sprintf("; DEGRADED: the disk refuses writes (%s), %d messages are in memory only and a power cut loses them", q.DiskError, q.Memory)
	}
	return line
}
