package queue

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"devid/hal/atomicfile"
)

const (
	setAsideFile    = "setaside.log"
	setAsideOldFile = "setaside.old.log"
)

// SetAside takes record seq out of the queue for good (the hub refuses
// it): it is appended to setaside.log (same record format, kept for an
// operator; when that file outgrows a segment it becomes setaside.old.log,
// replacing the previous one), counted in SetAside and treated as acked,
// so it never blocks the records behind it. If no copy can be written
// (a full disk) the record is counted in Dropped instead, and the error
// says so.
func (q *Queue) SetAside(seq uint64, payload []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if seq <= q.acked || seq >= q.nextSeq || q.pending[seq] {
		return nil
	}
	err := q.keepCopyLocked(encodeRecord(seq, payload))
	if err == nil {
		q.setAside++
	} else {
		q.dropped++
		err = fmt.Errorf("queue: record %d dropped, no copy kept: %w", seq, err)
	}
	q.pending[seq] = true
	q.advanceLocked()
	if werr := q.writeCursorLocked(true); werr != nil {
		q.cursorDirty = true
		if err == nil {
			err = werr
		}
	}
	q.gcLocked()
	q.wake()
	return err
}

func (q *Queue) keepCopyLocked(rec []byte) error {
	path := filepath.Join(q.dir, setAsideFile)
	if fi, err := os.Stat(path); err == nil && fi.Size()+int64(len(rec)) > q.opt.SegmentBytes {
		if err := os.Rename(path, filepath.Join(q.dir, setAsideOldFile)); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	size, _ := f.Seek(0, io.SeekEnd)
	if _, err = f.Write(rec); err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Truncate(size) // no partial record in the set-aside file either
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = atomicfile.SyncDir(q.dir)
	}
	return err
}
