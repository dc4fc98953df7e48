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
	"strings"
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
	// owner: the directory came from Open, in the agent or the factory,
	// which may set damaged records aside. A Dir{Path: …} literal (status,
	// check) only reads: a damaged record is reported, never renamed.
	owner bool
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
	return &Dir{Path: path, owner: true}, nil
}

// File returns the path of name inside the directory.
func (d *Dir) File(name string) string { return filepath.Join(d.Path, name) }

// writeJSON writes v (which must carry a "schema" field, at most
// schema) as name, unless the file already holds exactly these bytes
// (saves flash wear). A file written by a newer agent is never
// overwritten: that would destroy what the newer agent recorded.
// written says whether the file was written: a skipped write (false, nil)
// proves nothing about whether the directory takes writes.
func (d *Dir) writeJSON(name string, schema int, v any) (written bool, err error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return false, fmt.Errorf("encode %s: %w", name, err)
	}
	b = append(b, '\n')
	if old, err := os.ReadFile(d.File(name)); err == nil {
		if bytes.Equal(old, b) {
			return false, nil
		}
		if n, ok := schemaOf(old); ok && n > schema {
			return false, newerError(d.File(name), n, schema)
		}
	}
	if err := atomicfile.WriteFile(d.File(name), b, 0o600); err != nil {
		return false, err
	}
	return true, nil
}

// schemaOf returns the "schema" field of a JSON record, if it has one.
func schemaOf(b []byte) (int, bool) {
	var head struct {
		Schema *int `json:"schema"`
	}
	if json.Unmarshal(b, &head) != nil || head.Schema == nil {
		return 0, false
	}
	return *head.Schema, true
}

func newerError(path string, got, max int) error {
	return fmt.Errorf("%s: schema %d, this agent reads and writes up to %d: %w", path, got, max, ErrNewerSchema)
}

// readJSON reads name into v after checking its schema is at most max.
// A file that cannot be decoded is moved aside to name.corrupt-<time>
// (never deleted) and reported as a *CorruptError that wraps ErrNotExist.
func (d *Dir) readJSON(name string, max int, v any) error {
	b, err := os.ReadFile(d.File(name))
	if err != nil {
		return err
	}
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return d.quarantine(name, fmt.Errorf("not JSON: %v", err))
	}
	if head.Schema == nil {
		return d.quarantine(name, errors.New("no schema field"))
	}
	if *head.Schema > max {
		return newerError(d.File(name), *head.Schema, max)
	}
	if *head.Schema < 1 {
		return d.quarantine(name, fmt.Errorf("schema %d is not valid", *head.Schema))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return d.quarantine(name, err)
	}
	return nil
}

// CorruptError is a record that could not be decoded: Path was renamed
// to Aside (empty when even that failed) because of Cause.
type CorruptError struct {
	Path, Aside string
	Cause       error
}

func (e *CorruptError) Error() string {
	if e.Aside == "" {
		return fmt.Sprintf("%s is damaged (%v) and could not be set aside", e.Path, e.Cause)
	}
	return fmt.Sprintf("%s is damaged (%v); set aside as %s", e.Path, e.Cause, filepath.Base(e.Aside))
}

// Unwrap makes a set-aside record read as absent (errors.Is ErrNotExist):
// the agent carries on without it.
func (e *CorruptError) Unwrap() error {
	if e.Aside == "" {
		return e.Cause
	}
	return ErrNotExist
}

// CorruptSuffix starts the suffix of a damaged file's set-aside name:
// NAME.corrupt-<UTC time>.
const CorruptSuffix = ".corrupt-"

// AsideName is the name a damaged file at path is set aside under.
func AsideName(path string, now time.Time) string {
	return path + CorruptSuffix + now.UTC().Format("20060102T150405.000000000Z")
}

func (d *Dir) quarantine(name string, why error) error {
	e := &CorruptError{Path: d.File(name), Cause: why}
	if !d.owner {
		return e // a reader: the agent sets it aside when it reads it
	}
	aside := AsideName(e.Path, time.Now())
	if err := os.Rename(e.Path, aside); err != nil {
		e.Cause = fmt.Errorf("%v; rename: %w", why, err)
		return e
	}
	_ = atomicfile.SyncDir(d.Path)
	e.Aside = aside
	return e
}

// CheckSchemas returns an error naming the first agent record (state,
// assignment) written by a newer agent. The agent refuses to start on
// one (docs/state-dir.md): running would mean either overwriting it or
// running on stale memory.
func (d *Dir) CheckSchemas() error {
	for _, r := range []struct {
		name string
		max  int
	}{{StateFile, StateSchema}, {AssignmentFile, AssignmentSchema}, {DeviceIDFile, DeviceIDSchema}} {
		b, err := os.ReadFile(d.File(r.name))
		if err != nil {
			continue
		}
		if n, ok := schemaOf(b); ok && n > r.max {
			return newerError(d.File(r.name), n, r.max)
		}
	}
	return nil
}

// SetAsideFiles lists the damaged files set aside in the state directory
// and its queue directory (NAME.corrupt-<...>), for status and check.
// They stay until an operator removes them. A directory that does not
// exist holds none; any other read error (permission) is returned, so
// that no caller reports "none" for "could not look".
func SetAsideFiles(stateDir string) ([]string, error) {
	var out []string
	for _, dir := range []string{stateDir, filepath.Join(stateDir, QueueDir)} {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, err
		}
		for _, e := range ents {
			if strings.Contains(e.Name(), CorruptSuffix) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	return out, nil
}
