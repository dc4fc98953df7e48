// Package statedir is the agent's persistent memory under state_dir
// (default /var/lib/devid, mode 0700): atomic, schema-versioned JSON
// records for the cached DPS assignment and the agent's state.
//
// Every write goes to a temp file in the same directory, is fsynced,
// renamed over the old file, and the directory is fsynced, so a power
// cut leaves either the old or the new record, never a torn one.
// Records carry "schema"; a record from a newer schema is refused
// rather than misread, and nothing is ever deleted because it could
// not be read (it is renamed aside instead).
package statedir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"devid/hal/atomicfile"
)

// File names inside the state directory owned by the agent. The key and
// certificate files are the enroll package's (see docs/state-dir.md).
const (
	AssignmentFile = "assignment.json"
	StateFile      = "state.json"
	QueueDir       = "queue"
	// JournalFile is reserved for the credential-rotation journal.
	JournalFile = "journal.json"
)

// Schema versions of the records this build reads and writes.
const (
	AssignmentSchema = 1
	StateSchema      = 1
)

// ErrNotExist means the record has never been written.
var ErrNotExist = fs.ErrNotExist

// ErrNewerSchema means the record was written by a newer agent.
var ErrNewerSchema = errors.New("record written by a newer agent (schema too new)")

// Dir is an opened state directory.
type Dir struct {
	Path string
}

// Open makes sure path exists as a directory of mode 0700 and returns it.
// An existing directory with wider permissions is tightened, since it
// holds the key.
func Open(path string) (*Dir, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("state dir %q is not an absolute path", path)
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("state dir %s is not a directory", path)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(path, 0o700); err != nil {
			return nil, fmt.Errorf("state dir %s has mode %o and cannot be made 0700: %w", path, st.Mode().Perm(), err)
		}
	}
	return &Dir{Path: path}, nil
}

// File returns the path of name inside the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// writeJSON writes v (which must carry a "schema" field) as name, unless
// the file already holds exactly these bytes (saves flash wear).
func (d *Dir) writeJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	b = append(b, '\n')
	if old, err := os.ReadFile(d.File(name)); err == nil && bytes.Equal(old, b) {
		return nil
	}
	return atomicfile.WriteFile(d.File(name), b, 0o600)
}

// readJSON reads name into v after checking its schema is at most max.
// A file that cannot be decoded is moved aside to name.corrupt-<time>
// (never deleted) and reported as an error that says so.
func (d *Dir) readJSON(name string, max int, v any) error {
	b, err := os.ReadFile(d.File(name))
	if err != nil {
		return err
	}
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := json.Unmarshal(b, &head); err != nil || head.Schema == nil {
		return d.quarantine(name, fmt.Errorf("no schema field or not JSON: %v", err))
	}
	if *head.Schema > max {
		return fmt.Errorf("%s: schema %d, this agent reads up to %d: %w", name, *head.Schema, max, ErrNewerSchema)
	}
	if *head.Schema < 1 {
		return d.quarantine(name, fmt.Errorf("schema %d", *head.Schema))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return d.quarantine(name, err)
	}
	return nil
}

func (d *Dir) quarantine(name string, why error) error {
	aside := d.File(name + ".corrupt-" + time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(d.File(name), aside); err != nil {
		return fmt.Errorf("%s is unreadable (%v) and could not be moved aside: %w", name, why, err)
	}
	_ = atomicfile.SyncDir(d.Path)
	return fmt.Errorf("%s is unreadable (%v); kept as %s: %w", name, why, filepath.Base(aside), ErrNotExist)
}
