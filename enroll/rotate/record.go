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
	// Unproven: the current credential was committed while its probe
	// could not reach the service (ErrNotReached); the first connection
	// made with it clears this (Renewer.Proven).
	Unproven bool `json:"unproven,omitempty"`
	// Policy, when set, overrides the configured policy (desired property).
	Policy *Policy `json:"policy,omitempty"`
}

// ErrNewerSchema means a record was written by a newer agent: it is
// never overwritten (docs/state-dir.md).
var ErrNewerSchema = errors.New("written by a newer agent (schema too new)")

// LoadRecord reads the renewal record; a missing one is the zero Record.
// A damaged one is renamed to renewal.json.corrupt-<UTC time> (never
// overwritten in silence): the zero Record is returned with an error
// that names the file, the cause and the new name. A record of a newer
// schema is left alone and reported as ErrNewerSchema.
func LoadRecord(stateDir string) (Record, error) {
	r, cause, err := readRecord(stateDir)
	if err != nil || cause == nil {
		return r, err
	}
	path := filepath.Join(stateDir, RecordFile)
	aside := path + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(path, aside); err != nil {
		return Record{Schema: RecordSchema}, fmt.Errorf("renewal record %s is damaged (%v) and could not be set aside: %w", path, cause, err)
	}
	_ = atomicfile.SyncDir(stateDir)
	return Record{Schema: RecordSchema}, fmt.Errorf("renewal record %s is damaged (%v); set aside as %s, starting a new one", path, cause, filepath.Base(aside))
}

// ReadRecord is LoadRecord for readers such as status and check: a
// damaged record is reported, never set aside (the agent does that).
func ReadRecord(stateDir string) (Record, error) {
	r, cause, err := readRecord(stateDir)
	if err == nil && cause != nil {
		err = fmt.Errorf("renewal record %s is damaged: %v", filepath.Join(stateDir, RecordFile), cause)
	}
	return r, err
}

// readRecord reads the renewal record. cause says why a record that is
// there cannot be used (then r is the zero Record); err is a newer schema
// or a read error.
func readRecord(stateDir string) (r Record, cause, err error) {
	path := filepath.Join(stateDir, RecordFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{Schema: RecordSchema}, nil, nil
	}
	if err != nil {
		return r, nil, fmt.Errorf("renewal record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		cause = err
	} else if r.Schema > RecordSchema {
		return r, nil, fmt.Errorf("renewal record %s: schema %d, this agent reads and writes up to %d: %w", path, r.Schema, RecordSchema, ErrNewerSchema)
	} else if r.Schema < 1 {
		cause = fmt.Errorf("schema %d is not valid", r.Schema)
	}
	if cause != nil {
		return Record{Schema: RecordSchema}, cause, nil
	}
	return r, nil, nil
}

// SaveRecord writes the renewal record atomically. A record of a newer
// schema on disk is never overwritten (ErrNewerSchema).
func SaveRecord(stateDir string, r Record) error {
	r.Schema = RecordSchema
	path := filepath.Join(stateDir, RecordFile)
	if b, err := os.ReadFile(path); err == nil {
		var head struct {
			Schema int `json:"schema"`
		}
		if json.Unmarshal(b, &head) == nil && head.Schema > RecordSchema {
			return fmt.Errorf("renewal record %s: schema %d, this agent writes %d; not overwritten: %w", path, head.Schema, RecordSchema, ErrNewerSchema)
		}
	}
	return writeJSON(path, "renewal record", r)
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
