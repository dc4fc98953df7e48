package agent

import (
	"errors"
	"fmt"
	"log/slog"

	"devid/agent/statedir"
	"devid/enroll/rotate"
)

// refuseNewerRecords stops the agent before it touches a record written
// by a newer agent (state.json, assignment.json, renewal.json, the
// rotation journal; the queue's cursor is checked by queue.Open).
// Running on would mean
// overwriting it with this agent's schema, or running on stale memory;
// a downgraded agent stops instead and says which file and schema
// (docs/state-dir.md, "Schema").
// A damaged renewal.json is set aside here, and logged.
func refuseNewerRecords(dir *statedir.Dir, log *slog.Logger) error {
	if err := dir.CheckSchemas(); err != nil {
		return fmt.Errorf("%w; refusing to overwrite it (run the newer agent, or move the file away)", err)
	}
	if err := rotate.CheckJournal(dir.Path); err != nil {
		return fmt.Errorf("%w; refusing to overwrite it (run the newer agent, or move the file away)", err)
	}
	switch _, err := rotate.LoadRecord(dir.Path); {
	case errors.Is(err, rotate.ErrNewerSchema):
		return fmt.Errorf("%w; refusing to overwrite it (run the newer agent, or move the file away)", err)
	case err != nil:
		log.Error("renewal record unreadable; renewal starts a new one", "err", err)
	}
	return nil
}

// logUnreadable logs a state record the agent could not use: its path,
// the cause, and where it was set aside.
func (a *Agent) logUnreadable(msg string, err error) {
	var ce *statedir.CorruptError
	if errors.As(err, &ce) {
		a.log.Error(msg, "path", ce.Path, "cause", ce.Cause.Error(), "set_aside_as", ce.Aside)
		return
	}
	a.log.Error(msg, "err", err)
}
