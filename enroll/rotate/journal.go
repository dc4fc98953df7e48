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

// JournalFile is the rotation journal's name in the state directory. It
// exists only while a rotation is under way (or was cut short).
const JournalFile = "journal.json"

// Suffixes of the staged (new) and backup (old) files next to a current one.
const (
	StagedSuffix = ".staged"
	OldSuffix    = ".old"
)

// JournalSchema is the journal's record version.
const JournalSchema = 1

// Phase is how far a rotation got. Recovery rolls back before PhaseProved
// and forward from it.
type Phase string

// Phases, in order.
const (
	// PhaseBegin: names chosen, nothing staged yet (or partly staged).
	PhaseBegin Phase = "begin"
	// PhaseStaged: the new key and chain are on disk under staged names.
	PhaseStaged Phase = "staged"
	// PhaseProved: the staged credential connected, or the probe could not
	// reach the service (journal.Unproven); it will be swapped in.
	PhaseProved Phase = "proved"
	// PhaseCommitted: the swap is done; only the old key is left to destroy.
	PhaseCommitted Phase = "committed"
)

// rename is one staged file that replaces a current one.
type rename struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Backup is where the current file is hard-linked before the swap,
	// so the old credential exists until the rotation is recorded.
	Backup string `json:"backup"`
}

// journal is the record in JournalFile.
type journal struct {
	Schema int       `json:"schema"`
	Phase  Phase     `json:"phase"`
	Start  time.Time `json:"started"`
	Path   string    `json:"path"`
	NewKey bool      `json:"new_key"`
	// KeySpec and StagedKeySpec name the current and staged key stores.
	KeySpec       string `json:"key_spec"`
	StagedKeySpec string `json:"staged_key_spec,omitempty"`
	// Renames are applied in order at the swap: the key files first, the
	// chain last.
	Renames []rename `json:"renames"`
	// Serial is the new leaf's serial (hex), once known.
	Serial string `json:"serial,omitempty"`
	// Unproven: proved only in that the probe could not reach the service
	// (ErrNotReached); recovery rolls it forward like any proved one.
	Unproven bool `json:"unproven,omitempty"`
}

func journalPath(stateDir string) string { return filepath.Join(stateDir, JournalFile) }

func writeJournal(stateDir string, j *journal) error {
	j.Schema = JournalSchema
	return writeJSON(journalPath(stateDir), "rotation journal", j)
}

// readJournal returns the journal, or nil when there is none.
func readJournal(stateDir string) (*journal, error) {
	b, err := os.ReadFile(journalPath(stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rotation journal: %w", err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("rotation journal %s is not JSON: %v", journalPath(stateDir), err)
	}
	if j.Schema > JournalSchema {
		// A newer agent's rotation, cut short: only that agent knows how
		// to finish it, so nothing here touches it (nor starts another).
		return nil, fmt.Errorf("rotation journal %s: schema %d, this agent reads and writes up to %d: %w", journalPath(stateDir), j.Schema, JournalSchema, ErrNewerSchema)
	}
	if j.Schema < 1 {
		return nil, fmt.Errorf("rotation journal %s: schema %d is not valid", journalPath(stateDir), j.Schema)
	}
	switch j.Phase {
	case PhaseBegin, PhaseStaged, PhaseProved, PhaseCommitted:
	default:
		return nil, fmt.Errorf("rotation journal %s: unknown phase %q", journalPath(stateDir), j.Phase)
	}
	for _, r := range j.Renames {
		if !inStateDir(stateDir, r.To) || r.From != r.To+StagedSuffix || r.Backup != r.To+OldSuffix {
			return nil, fmt.Errorf("rotation journal %s: rename %+v is not a staged/old pair inside the state directory", journalPath(stateDir), r)
		}
	}
	return &j, nil
}

// CheckJournal reports a rotation journal written by a newer agent
// (ErrNewerSchema): the agent refuses to start over it rather than leave
// that agent's rotation half done. Any other problem with the journal is
// Recover's to report.
func CheckJournal(stateDir string) error {
	if _, err := readJournal(stateDir); errors.Is(err, ErrNewerSchema) {
		return err
	}
	return nil
}

func removeJournal(stateDir string) error {
	if err := os.Remove(journalPath(stateDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotation journal: %w", err)
	}
	return atomicfile.SyncDir(stateDir)
}

// inStateDir reports whether path names a file directly in stateDir.
// Rotation only ever renames files there, so a corrupt or forged journal
// cannot make recovery touch anything else.
func inStateDir(stateDir, path string) bool {
	return filepath.IsAbs(path) && filepath.Clean(path) == path && filepath.Dir(path) == filepath.Clean(stateDir) &&
		filepath.Base(path) != "." && filepath.Base(path) != ".."
}
