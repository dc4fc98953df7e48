package agent

import (
	"time"

	"devid/agent/statedir"
)

// Status is what `devid-agent status` and the local API show.
type Status struct {
	State      string    `json:"state"`
	Since      time.Time `json:"since"`
	DeviceID   string    `json:"device_id,omitempty"`
	Hub        string    `json:"hub,omitempty"`
	KeyBackend string    `json:"key_backend,omitempty"`
	// CertExpiry and CertSerial are the certificate the hub gets:
	// CertKind says which, "factory" or "operational" (DPS-issued or
	// renewed); with an operational one FactoryCertExpiry is the factory
	// (onboarding) certificate's, which DPS keeps getting.
	CertExpiry        time.Time `json:"cert_expiry,omitzero"`
	CertSerial        string    `json:"cert_serial,omitempty"`
	CertKind          string    `json:"cert_kind,omitempty"`
	FactoryCertExpiry time.Time `json:"factory_cert_expiry,omitzero"`
	Queue             QueueInfo `json:"queue"`
	HubFailures       int       `json:"hub_failures"`
	LastError         string    `json:"last_error,omitempty"`
	// ClockWait is set while the agent waits for a sane clock.
	ClockWait     *ClockWait                `json:"clock_wait,omitempty"`
	NextRetry     time.Time                 `json:"next_retry,omitzero"`
	LastProvision *statedir.ProvisionResult `json:"last_provision,omitempty"`
	Version       string                    `json:"version"`
	Uptime        string                    `json:"uptime"`
	StartedAt     time.Time                 `json:"started_at"`
	Sent          uint64                    `json:"sent"`
	// Config is set when the config file was invalid and the agent runs
	// with its last-known-good copy: what was wrong, and from when.
	Config string `json:"config,omitempty"`
	// StateDirError is set while the state directory refuses writes (a
	// read-only or full disk): the agent runs on, degraded, with its
	// state in memory; a restart or power cut loses what changed.
	StateDirError string `json:"state_dir_error,omitempty"`
	// SetAsideFiles are the damaged files set aside in the state dir
	// (NAME.corrupt-<...>, statedir.SetAsideFiles), and SetAsideError why
	// they could not be listed. The agent lists them because the user
	// asking may not read the state dir (mode 0700).
	SetAsideFiles []string `json:"set_aside_files,omitempty"`
	SetAsideError string   `json:"set_aside_error,omitempty"`
	// Extra holds extension status by name (e.g. "renewal").
	Extra map[string]any `json:"extra,omitempty"`
}

// QueueInfo is the telemetry queue part of Status.
type QueueInfo struct {
	Depth   uint64 `json:"depth"`
	Bytes   int64  `json:"bytes"`
	Dropped uint64 `json:"dropped"`
	// Corrupt: damaged records skipped (docs/state-dir.md).
	Corrupt uint64 `json:"corrupt"`
	// SetAside: messages the hub refused for good, in queue/setaside.log.
	SetAside uint64 `json:"set_aside"`
	// CursorSetAside: where a damaged ack cursor was moved.
	CursorSetAside string `json:"cursor_set_aside,omitempty"`
	// Memory: messages kept only in memory because the disk refuses
	// writes (DiskError says why); a power cut loses them.
	Memory    uint64 `json:"memory,omitempty"`
	DiskError string `json:"disk_error,omitempty"`
}

// ClockWait describes a wait for a sane clock.
type ClockWait struct {
	Since time.Time `json:"since"`
	Floor time.Time `json:"floor"`
	// Source names the floor: build date, certificate notBefore or last
	// known good time (clockfloor.go).
	Source string `json:"source,omitempty"`
	Reason string `json:"reason"`
	// Exceeded: clock.max_wait passed; the agent proceeds but treats
	// TLS time errors as clock problems, never as identity problems.
	Exceeded bool `json:"exceeded,omitempty"`
}

// Status returns a snapshot of the agent's status.
func (a *Agent) Status() Status {
	qs := a.queue.Stats()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Queue = QueueInfoFrom(qs)
	s.Sent = a.sent
	now := a.clock.Now()
	s.Uptime = now.Sub(s.StartedAt).Truncate(time.Second).String()
	s.Extra = map[string]any{"renewal": a.renewal.Status()}
	var err error
	if s.SetAsideFiles, err = statedir.SetAsideFiles(a.cfg.StateDir); err != nil {
		s.SetAsideError = err.Error()
	}
	return s
}

// deviceID is the one source of Status.DeviceID: the ID the hub knows
// once DPS assigned one, else the identity's (its certificate CN). Like
// publishStatus, it runs on the state machine's goroutine.
func (a *Agent) deviceID() string {
	if a.assignment != nil && a.assignment.DeviceID != "" {
		return a.assignment.DeviceID
	}
	if a.id != nil {
		return a.id.DeviceID()
	}
	return ""
}

func (a *Agent) publishStatus(nextRetry time.Time) {
	a.mu.Lock()
	a.status.State = a.state.String()
	a.status.Since = a.persisted.Since
	a.status.Hub = a.hubName()
	a.status.DeviceID = a.deviceID()
	a.status.HubFailures = a.cnt.hubFailures
	a.status.LastError = a.persisted.LastError
	a.status.LastProvision = a.persisted.LastProvision
	a.status.NextRetry = nextRetry
	a.status.Version = a.opt.Version
	a.status.StartedAt = a.started
	if a.state != Enrolled {
		a.status.ClockWait = nil
	}
	a.mu.Unlock()
	if a.opt.OnState != nil {
		a.opt.OnState(a.Status())
	}
}
