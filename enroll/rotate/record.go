package rotate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"devid/hal/atomicfile"
)

// RecordFile is the renewal record's name in the state directory.
const RecordFile = "renewal.json"

// RecordSchema is the renewal record's version.
const RecordSchema = 1

// Issuance paths recorded with the identity.
const (
	PathDPS  = "dps-csr" // DPS certificate issuance (register with a csr)
	PathEST  = "est"     // EST /simplereenroll with the current certificate
	PathHub  = "hub-csr" // IoT Hub credentials topic (preview), current operational certificate
	PathNone = ""        // nothing can renew this credential: check warns
)

// Record is what the device remembers about renewing its credential: the
// issuance path that applies (so renewal always knows how, and check can
// warn when nothing can renew), the last attempts, and a renewal policy
// set through the desired property, which outlives restarts.
type Record struct {
	Schema int `json:"schema"`
	// Path is the issuance path of the current credential: PathDPS,
	// PathEST or PathNone (factory-installed, no renewal configured).
	Path string `json:"path"`
	// Source says where certificates come from (EST URL, DPS scope).
	Source string `json:"source,omitempty"`
	// Serial and NotAfter describe the current leaf.
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	// LastAttempt, LastSuccess and LastFailure are renewal attempt times.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	// LastError is the last failure's message; Failures counts failures
	// since the last success.
	LastError string `json:"last_error,omitempty"`
	Failures  int    `json:"failures,omitempty"`
	// Rotations counts committed rotations.
	Rotations int `json:"rotations,omitempty"`
	// Policy, when set, overrides the configured policy (desired property).
	Policy *Policy `json:"policy,omitempty"`
}

// LoadRecord reads the renewal record; a missing one is the zero Record.
func LoadRecord(stateDir string) (Record, error) {
	var r Record
	b, err := os.ReadFile(filepath.Join(stateDir, RecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{Schema: RecordSchema}, nil
	}
	if err != nil {
		return r, fmt.Errorf("renewal record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{Schema: RecordSchema}, fmt.Errorf("renewal record %s is not valid (%v); starting a new one", RecordFile, err)
	}
	if r.Schema > RecordSchema {
		return r, fmt.Errorf("renewal record: schema %d, this build reads up to %d", r.Schema, RecordSchema)
	}
	return r, nil
}

// SaveRecord writes the renewal record atomically.
func SaveRecord(stateDir string, r Record) error {
	r.Schema = RecordSchema
	return writeJSON(filepath.Join(stateDir, RecordFile), "renewal record", r)
}

// writeJSON writes v as indented JSON to path (0600) atomically; what
// prefixes a write error.
func writeJSON(path, what string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
