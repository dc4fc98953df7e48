package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"devid/hal/atomicfile"
)

// cursorSchema is the cursor.json schema this agent writes. A newer one
// is never overwritten: Open refuses it (ErrNewerSchema).
const cursorSchema = 1

const cursorFile = "cursor.json"

// ErrNewerSchema is returned by Open when cursor.json was written by a
// newer agent: overwriting it could destroy what that agent recorded.
var ErrNewerSchema = errors.New("queue cursor has a newer schema")

// cursor is cursor.json: how far the queue is acknowledged, and the
// counters that must survive a restart.
type cursor struct {
	Schema int `json:"schema"`
	// Acked: every record up to it was delivered (PUBACK).
	Acked uint64 `json:"acked"`
	// Dropped: records removed unsent by the size bound.
	Dropped uint64 `json:"dropped"`
	// Corrupt: damaged records skipped by their checksum.
	Corrupt uint64 `json:"corrupt,omitempty"`
	// SetAside: records the hub refused for good, moved to setaside.log.
	SetAside uint64 `json:"set_aside,omitempty"`
}

// parseCursor parses cursor.json. A newer schema is ErrNewerSchema; any
// other error means the file is damaged.
func parseCursor(b []byte) (cursor, error) {
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return cursor{}, fmt.Errorf("not JSON: %w", err)
	}
	switch {
	case head.Schema == nil:
		return cursor{}, errors.New("no schema field")
	case *head.Schema > cursorSchema:
		return cursor{}, fmt.Errorf("%w: schema %d, this agent writes %d", ErrNewerSchema, *head.Schema, cursorSchema)
	case *head.Schema < 1:
		return cursor{}, fmt.Errorf("schema %d is not valid", *head.Schema)
	}
	var c cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return cursor{}, fmt.Errorf("schema %d: %w", c.Schema, err)
	}
	return c, nil
}

// loadCursor reads dir's cursor. A missing cursor is the zero cursor; a
// damaged one is logged with its path and cause and renamed to
// cursor.json.corrupt-<time> (so it is never overwritten in silence), and
// the queue starts from the zero cursor: at worst records are resent.
func (q *Queue) loadCursor() (cursor, error) {
	path := filepath.Join(q.dir, cursorFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cursor{Schema: cursorSchema}, nil
	}
	if err != nil {
		return cursor{}, fmt.Errorf("queue: %w", err)
	}
	c, err := parseCursor(b)
	if errors.Is(err, ErrNewerSchema) {
		return cursor{}, fmt.Errorf("queue: %s: %w; refusing to overwrite it (run the newer agent, or move the queue directory away)", path, err)
	}
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return cursor{}, fmt.Errorf("queue: %s is damaged (%v) and cannot be set aside: %w", path, err, rerr)
		}
		q.log.Error("telemetry queue cursor is damaged; set aside, queued messages may be sent again",
			"path", path, "cause", err.Error(), "set_aside_as", aside)
		q.cursorAside = aside
		return cursor{Schema: cursorSchema}, nil
	}
	return c, nil
}

// replaceUnsynced replaces path with data through a temp file and a
// rename, without fsync (see writeCursorLocked).
func replaceUnsynced(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// flusher writes the cursor after acks, coalescing those that arrive
// while a write is under way.
func (q *Queue) flusher() {
	defer close(q.flusherDone)
	for range q.cursorKick {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		if q.cursorDirty {
			if err := q.writeCursorLocked(false); err != nil {
				if !q.cursorFailing {
					q.log.Warn("telemetry queue: cannot write the ack cursor; retrying every fsync_interval, and a power cut now may resend more than the in-flight window", "err", err)
				}
				q.cursorFailing = true
				q.scheduleFlushLocked()
			}
		}
		q.mu.Unlock()
		q.wake()
	}
}

// writeCursorLocked replaces cursor.json with the current cursor, through
// a temp file and a rename, so a reader sees the old or the new one. With
// sync it is fsynced (file and directory) and survives a power cut;
// without, it survives a crash of the agent (the kernel has it), costs no
// fsync per PUBACK batch, and a synced write follows within
// fsync_interval. A power cut in between leaves an older cursor: more
// duplicates, never a loss. Before a segment is deleted the write is
// always synced.
func (q *Queue) writeCursorLocked(sync bool) error {
	c := cursor{Schema: cursorSchema, Acked: q.acked, Dropped: q.dropped, Corrupt: q.corrupt, SetAside: q.setAside}
	b, _ := json.Marshal(c)
	path := filepath.Join(q.dir, cursorFile)
	if sync {
		if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("queue: %w", err)
		}
		q.cursorUnsynced = false
	} else {
		if err := replaceUnsynced(path, b); err != nil {
			return fmt.Errorf("queue: write %s: %w", path, err)
		}
		q.cursorUnsynced = true
		q.scheduleFlushLocked()
	}
	q.cursorDirty = false
	q.durable = c.Acked
	if q.cursorFailing {
		q.cursorFailing = false
		q.log.Info("telemetry queue: the ack cursor is written again")
	}
	return nil
}
