package statedir

import (
	"time"
)

// Assignment is the cached DPS result. With it the agent connects
// straight to its hub at boot instead of registering again (DPS
// registrations are rate-limited and billed).
type Assignment struct {
	Schema int `json:"schema"`
	// Hub is the assigned hub's host name (assignedHub).
	Hub string `json:"hub"`
	// DeviceID is the device ID on that hub.
	DeviceID string `json:"device_id"`
	// RegistrationID is what the agent registered as (the cert CN).
	RegistrationID string `json:"registration_id"`
	// IDScope and Endpoint are the DPS instance that made the
	// assignment; a config naming another one invalidates the cache.
	IDScope  string `json:"id_scope"`
	Endpoint string `json:"endpoint"`
	// AssignedAt is when DPS assigned the device (agent clock).
	AssignedAt time.Time `json:"assigned_at"`
	// Substatus is DPS's substatus (initialAssignment, deviceDataMigrated, ...).
	Substatus string `json:"substatus,omitempty"`
	// IssuedChainPEM is the operational chain DPS issued when the agent
	// registered with a CSR; empty for classic X.509 registration.
	IssuedChainPEM string `json:"issued_chain_pem,omitempty"`
	// CertFingerprint is the SHA-256 of the leaf that registered, so a
	// new certificate invalidates the cache.
	CertFingerprint string `json:"cert_fingerprint,omitempty"`
}

// State is the agent's persisted state: the state-machine state by name
// (never a number), the clock floor, and what status shows.
type State struct {
	Schema int `json:"schema"`
	// Name is the state-machine state ("connected", "revoked", ...).
	Name string `json:"state"`
	// Since is when the agent entered Name.
	Since time.Time `json:"since"`
	// LastKnownGood is the latest time the agent saw a verified TLS
	// session; the clock is never trusted below it.
	LastKnownGood time.Time `json:"last_known_good"`
	// HubFailures counts consecutive failed hub connections.
	HubFailures int `json:"hub_failures"`
	// LastError is the last error that changed the state.
	LastError string `json:"last_error,omitempty"`
	// LastProvision is the last DPS result.
	LastProvision *ProvisionResult `json:"last_provision,omitempty"`
	// Revoked records why the agent is in the revoked state.
	RevokedReason string `json:"revoked_reason,omitempty"`
	// RevokedCount is how many slow retries in a row found the device
	// still refused, and RetryAt when the next one is due; both survive
	// a reboot so a rebooting device does not ask DPS at every boot.
	RevokedCount int       `json:"revoked_count,omitempty"`
	RetryAt      time.Time `json:"retry_at,omitzero"`
}

// ProvisionResult is one DPS registration outcome.
type ProvisionResult struct {
	At     time.Time `json:"at"`
	Result string    `json:"result"` // assigned, disabled, failed, error
	Hub    string    `json:"hub,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// LoadAssignment returns the cached assignment or an error wrapping ErrNotExist.
func (d *Dir) LoadAssignment() (*Assignment, error) {
	var a Assignment
	if err := d.readJSON(AssignmentFile, AssignmentSchema, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// SaveAssignment stores a (its Schema is set here).
func (d *Dir) SaveAssignment(a *Assignment) error {
	_, err := d.WriteAssignment(a)
	return err
}

// WriteAssignment is SaveAssignment that also says whether it wrote the
// file: false with a nil error when the file already held this record.
func (d *Dir) WriteAssignment(a *Assignment) (written bool, err error) {
	a.Schema = AssignmentSchema
	return d.writeJSON(AssignmentFile, AssignmentSchema, a)
}

// ClearAssignment forgets the cached assignment (before re-provisioning).
// The old record is kept as assignment.json.prev for diagnosis.
func (d *Dir) ClearAssignment() error {
	return renameAside(d, AssignmentFile, AssignmentFile+".prev")
}

// LoadState returns the persisted state or an error wrapping ErrNotExist.
func (d *Dir) LoadState() (*State, error) {
	var s State
	if err := d.readJSON(StateFile, StateSchema, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// SaveState stores s (its Schema is set here).
func (d *Dir) SaveState(s *State) error {
	_, err := d.WriteState(s)
	return err
}

// WriteState is SaveState that also says whether it wrote the file:
// false with a nil error when the file already held this state, which
// says nothing about whether the directory takes writes.
func (d *Dir) WriteState(s *State) (written bool, err error) {
	s.Schema = StateSchema
	return d.writeJSON(StateFile, StateSchema, s)
}
