package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"devid/hal/atomicfile"
)

// The memory tail keeps a device useful while its disk refuses writes (a
// read-only remount after file-system errors, a full disk, a failing
// medium). With Options.MemoryBytes > 0, an Append that cannot be written
// goes to a segment held in memory instead, up to MemoryBytes; later
// Appends follow it there, to keep the order. Those records are sent and
// acknowledged like any other, but a power cut loses them, and Stats
// says how many there are and why (Memory, DiskError). Every flush
// interval, and before each Append, the queue tries to write the memory
// segment out as an ordinary segment file; once that works the queue is
// durable again, with nothing lost and nothing reordered.
//
// Without MemoryBytes an Append that cannot be written fails, as before.

// inMemory says whether s is the memory tail (it has no file).
func (s *segment) inMemory() bool { return s.path == "" }

// memTailLocked is the memory tail, or nil.
func (q *Queue) memTailLocked() *segment {
	if n := len(q.segs); n > 0 && q.segs[n-1].inMemory() {
		return q.segs[n-1]
	}
	return nil
}

// appendMemLocked keeps rec (record q.nextSeq) in the memory tail because
// the disk failed with cause. Without room it fails, and nothing is
// queued.
func (q *Queue) appendMemLocked(rec []byte, cause error) (uint64, error) {
	if q.opt.MemoryBytes <= 0 {
		return 0, cause
	}
	m := q.memTailLocked()
	if m == nil {
		if q.w != nil {
			q.w.Close()
			q.w = nil
		}
		m = &segment{first: q.nextSeq, last: q.nextSeq - 1}
		q.segs = append(q.segs, m)
	}
	if m.size+int64(len(rec)) > q.opt.MemoryBytes {
		q.compactMemLocked(m)
	}
	if m.size+int64(len(rec)) > q.opt.MemoryBytes {
		return 0, fmt.Errorf("queue: the disk refuses writes (%s) and the %d bytes kept in memory meanwhile are full", q.diskErr, q.opt.MemoryBytes)
	}
	if cause != nil {
		if q.diskErr == "" {
			q.log.Error("telemetry queue: the disk refuses writes; keeping new messages in memory until it takes them again (a power cut loses these)",
				"dir", q.dir, "err", cause, "memory_bytes", q.opt.MemoryBytes)
		}
		q.diskErr = cause.Error()
	}
	m.mem = append(m.mem, rec...)
	seq := q.nextSeq
	q.nextSeq++
	m.last = seq
	m.size += int64(len(rec))
	q.scheduleFlushLocked() // the flush timer retries the disk
	q.wake()
	return seq, nil
}

// compactMemLocked drops the acknowledged records at the front of the
// memory tail: they were never on disk, so no crash can ask for them
// again.
func (q *Queue) compactMemLocked(m *segment) {
	off := 0
	for m.first <= q.acked && m.first <= m.last {
		_, n, err := decodeRecord(m.mem[off:])
		if err != nil {
			break // cannot happen: the queue encoded these bytes itself
		}
		off += n
		m.first++
	}
	m.mem = append([]byte(nil), m.mem[off:]...)
	m.size = int64(len(m.mem))
	if q.rseg == m {
		q.rseg = nil
	}
}

// persistMemLocked writes the memory tail out as a segment file. It
// fails, leaving the tail in memory, while the disk still refuses.
func (q *Queue) persistMemLocked() error {
	m := q.memTailLocked()
	if m == nil {
		return nil
	}
	q.compactMemLocked(m)
	if m.count() == 0 {
		// Everything in it was delivered: nothing to write.
		q.segs = q.segs[:len(q.segs)-1]
		q.memRecovered(0)
		return nil
	}
	if err := os.MkdirAll(q.dir, 0o700); err != nil {
		return err
	}
	gen := 0
	for _, s := range q.segs {
		if s.first == m.first && !s.inMemory() {
			gen = max(gen, s.gen+1)
		}
	}
	for ; ; gen++ {
		path := filepath.Join(q.dir, segName(m.first, gen))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue // never reuse a name
		}
		if err != nil {
			return err
		}
		if _, err = f.Write(m.mem); err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = atomicfile.SyncDir(q.dir)
		}
		if err != nil {
			f.Close()
			os.Remove(path)
			return err
		}
		n := m.count()
		m.path, m.gen, m.mem = path, gen, nil
		q.w = f
		q.memRecovered(n)
		return nil
	}
}

func (q *Queue) memRecovered(records uint64) {
	q.log.Info("telemetry queue: the disk takes writes again; the messages kept in memory are on disk", "records", records)
	q.diskErr = ""
}

// memRecordsLocked counts the unacknowledged records held only in memory.
func (q *Queue) memRecordsLocked() uint64 {
	m := q.memTailLocked()
	if m == nil || m.last <= q.acked {
		return 0
	}
	n := m.last - max(q.acked, m.first-1)
	for seq := range q.pending {
		if seq >= m.first && seq <= m.last {
			n--
		}
	}
	return n
}

// segmentReader reads a segment's records, on disk or in memory.
type segmentReader interface {
	io.ReaderAt
	Close() error
}

type memReader struct{ *bytes.Reader }

func (memReader) Close() error { return nil }

func openSegment(s *segment) (segmentReader, error) {
	if s.inMemory() {
		return memReader{bytes.NewReader(s.mem)}, nil
	}
	return os.Open(s.path)
}
