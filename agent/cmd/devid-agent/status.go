package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"devid/agent"
	"devid/agent/config"
	"devid/agent/queue"
	"devid/agent/renewal"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/enroll/rotate"
	"devid/hal/cmdline"
)

type statusOut struct {
	agent.Status
	// Agent is whether the agent runs, as its local API tells: "running",
	// "not running", "not answering" or "unknown" (local API disabled).
	Agent string `json:"agent"`
	// AgentError is why the agent is not counted as running.
	AgentError string `json:"agent_error,omitempty"`
	// Source says where the status came from: the running agent's local
	// API, or the state files (agent not running or API disabled).
	Source string `json:"source"`
	// SavedAt is when the state file was last written (state files only):
	// the state shown is the one saved then, not a live one.
	SavedAt time.Time `json:"saved_at,omitzero"`
}

// statusOpts are the status command's flags and seams.
type statusOpts struct {
	cfgPath string
	asJSON  bool
	dial    dialFunc // nil: the local API socket
}

func statusFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	o := statusOpts{}
	fs.StringVar(&o.cfgPath, "config", config.DefaultPath, "config `FILE` (TOML)")
	fs.BoolVar(&o.asJSON, "json", false, "print JSON")
	return func(ctx context.Context, _ []string) error { return runStatus(ctx, os.Stdout, o) }
}

// statusExitHelp documents the exit status of status (help and man page).
const statusExitHelp = "0 the agent runs and is connected; 1 it runs but is not connected " +
	"(or degraded: last-known-good config, a state dir or queue disk refusing writes), or it is not running (the state shown is then the last one saved, if this user may read it); " +
	"2 a usage error, or the status could not be determined (permission denied on the socket or the state dir, local API disabled)."

// runStatus prints the status and returns the exit status as an error
// (cmdline.WithStatus): see statusExitHelp.
func runStatus(ctx context.Context, w io.Writer, o statusOpts) error {
	cfg, degraded, err := loadConfigOrLKG(o.cfgPath)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return cmdline.WithStatus(2, fmt.Errorf("status cannot be determined: %w: run as root or as a member of the config file's group", err))
		}
		return cmdline.WithStatus(2, fmt.Errorf("status cannot be determined: %w", err))
	}
	p := askAgent(ctx, cfg, o.dial)
	var out *statusOut
	switch p.live {
	case agentDenied:
		return cmdline.WithStatus(2, fmt.Errorf("status cannot be determined: %w", p.err))
	case agentRunning:
		out = &statusOut{Status: *p.status, Agent: "running", Source: "agent (" + cfg.LocalAPI.Socket + ")"}
	default:
		out, err = fileStatus(cfg)
		if err != nil && p.live == agentNotRunning {
			// That much is known: say it, and what could not be read.
			if o.asJSON {
				json.NewEncoder(w).Encode(map[string]string{"agent": "not running", "agent_error": p.err.Error(), "state_error": err.Error()})
			} else {
				fmt.Fprintf(w, "agent: not running (%v)\nlast saved state: unreadable here: %v\n", p.err, err)
			}
			return cmdline.WithStatus(1, nil)
		}
		if err != nil {
			return cmdline.WithStatus(2, fmt.Errorf("status cannot be determined: %w", err))
		}
		out.Config = degraded
		out.Agent = map[liveness]string{agentNotRunning: "not running", agentNotAnswering: "not answering", agentUnknown: "unknown"}[p.live]
		out.AgentError = p.err.Error()
	}
	if out.Extra == nil {
		out.Extra = map[string]any{}
	}
	out.Extra["renewal"] = renewalOf(cfg, out.Extra)
	if o.asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	} else {
		printStatus(w, out)
	}
	switch {
	case p.live == agentUnknown:
		return cmdline.WithStatus(2, fmt.Errorf("whether the agent runs cannot be determined: %w", p.err))
	case p.live != agentRunning:
		return cmdline.WithStatus(1, nil)
	case out.State != "connected" || out.Config != "" || out.StateDirError != "" || out.Queue.DiskError != "":
		return cmdline.WithStatus(1, nil) // running, but not connected or degraded
	}
	return nil
}

// fileStatus builds the status from the state directory. A file the
// caller may not read is an error (the status cannot be determined),
// never a status line.
func fileStatus(cfg *config.Config) (*statusOut, error) {
	out := &statusOut{Source: "state files (agent not answering on the local API)"}
	d := &statedir.Dir{Path: cfg.StateDir}
	if _, err := os.Stat(cfg.StateDir); errors.Is(err, fs.ErrPermission) {
		return nil, errors.New(stateDenied(cfg.StateDir))
	} else if errors.Is(err, fs.ErrNotExist) {
		// Not an unknown: the agent has never run with this config.
		out.State = "never run (no state dir " + cfg.StateDir + " yet)"
		return out, nil
	} else if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	st, err := d.LoadState()
	switch {
	case err == nil:
		out.State, out.Since, out.LastError = st.Name, st.Since, st.LastError
		out.HubFailures, out.LastProvision = st.HubFailures, st.LastProvision
		if fi, err := os.Stat(d.File(statedir.StateFile)); err == nil {
			out.SavedAt = fi.ModTime().UTC()
		}
	case errors.Is(err, fs.ErrPermission):
		return nil, errors.New(stateDenied(d.File(statedir.StateFile)))
	case errors.Is(err, statedir.ErrNotExist):
		out.State = "unknown (never run)"
	default:
		out.State = "unknown"
		out.LastError = err.Error()
		var ce *statedir.CorruptError
		if errors.As(err, &ce) { // status only reads; the agent sets it aside
			out.LastError = fmt.Sprintf("%s is damaged (%v); the agent sets it aside when it next reads it", ce.Path, ce.Cause)
		}
	}
	if as, err := d.LoadAssignment(); err == nil {
		out.Hub, out.DeviceID = as.Hub, as.DeviceID
	}
	if ch, err := certstore.Open(cfg.StateDir, nil).Load(); err == nil {
		out.CertExpiry, out.CertSerial, out.CertKind = ch.NotAfter(), ch.Serial(), "factory"
		if out.DeviceID == "" {
			out.DeviceID = ch.Leaf.Subject.CommonName
		}
		// As the agent shows it (agent/connect.go showCertInUse): with
		// renewal paths dps and hub (and auto choosing dps) the hub gets
		// the operational one.
		if renewal.UsesOperational(cfg) {
			if op, _, err := operationalLeaf(cfg); err == nil {
				out.FactoryCertExpiry = out.CertExpiry
				out.CertExpiry, out.CertSerial, out.CertKind = op.NotAfter, fmt.Sprintf("%x", op.SerialNumber), "operational"
			}
		}
	}
	if qs, err := queue.Inspect(d.File(statedir.QueueDir)); err == nil {
		out.Queue = agent.QueueInfoFrom(qs)
	}
	if out.SetAsideFiles, err = statedir.SetAsideFiles(cfg.StateDir); err != nil {
		out.SetAsideError = err.Error()
	}
	return out, nil
}

func printStatus(out io.Writer, s *statusOut) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "%s:\t%s\n", k, v)
	}
	agentLine := s.Agent
	if s.AgentError != "" {
		agentLine += " (" + s.AgentError + ")"
	}
	row("agent", agentLine)
	state := s.State
	if !s.Since.IsZero() {
		state += fmt.Sprintf(" (since %s)", s.Since.Format(time.RFC3339))
	}
	if s.Agent == "running" {
		row("state", state)
	} else {
		// Never a live-looking state for an agent that did not answer.
		if !s.SavedAt.IsZero() {
			state += ", saved " + s.SavedAt.Format(time.RFC3339)
		}
		row("last saved state", state+"; not live")
	}
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
	row("set aside", setAsideLine(s.SetAsideFiles, s.SetAsideError))
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

// setAsideLine is the status line of the damaged files set aside in
// the state dir (statedir.SetAsideFiles).
func setAsideLine(files []string, listErr string) string {
	switch {
	case listErr != "":
		return "could not list: " + listErr
	case len(files) == 0:
		return "none"
	}
	return fmt.Sprintf("%d damaged file(s) set aside: %s", len(files), strings.Join(files, ", "))
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
