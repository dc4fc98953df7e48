package queue

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"devid/hal/atomicfile"
)

// recover scans one segment: it skips damaged records (rewriting the
// segment without them) and cuts off a torn tail. Records must follow
// floor and each other in order.
func (q *Queue) recover(s *segment, floor uint64) error {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	prev := max(floor, s.first-1)
	sc := scan(b, prev)
	// Sequence numbers with no record (lost to damage) need no ack: they
	// are marked acked, so the cursor moves past them.
	s.first = min(s.first, floor+1)
	s.last = s.first - 1
	for _, r := range sc.recs {
		for seq := max(s.last, q.acked) + 1; seq < r.Seq; seq++ {
			q.pending[seq] = true
		}
		s.last = r.Seq
	}
	s.size = sc.end
	if len(sc.damage) > 0 {
		clean := make([]byte, 0, len(b))
		for _, r := range sc.recs {
			clean = append(clean, encodeRecord(r.Seq, r.Payload)...)
		}
		if err := atomicfile.WriteFile(s.path, clean, 0o600); err != nil {
			// No room to rewrite it (a full disk): readers skip the
			// damage in place and count it then.
			q.log.Warn("telemetry queue: cannot rewrite a damaged segment; skipping its damage in place", "path", s.path, "err", err)
			return nil
		}
		for _, d := range sc.damage {
			aside := q.keepDamage(s.path, d, b[d.off:d.end])
			q.log.Error("telemetry queue: damaged record skipped", "path", s.path, "offset", d.off, "bytes", d.end-d.off,
				"cause", d.cause, "records", d.records, "set_aside_as", aside)
			q.corrupt += d.records
		}
		s.size = int64(len(clean))
		return nil
	}
	if sc.end < int64(len(b)) {
		// A torn write (power cut or full disk mid-record).
		if err := os.Truncate(s.path, sc.end); err != nil {
			// A read-only disk: readers stop at the good end, nothing is
			// appended after the torn bytes, and the next Open that can
			// write cuts them.
			q.log.Warn("telemetry queue: cannot cut a torn record; the segment is sealed before it", "path", s.path, "err", err)
			s.sealed = true
			return nil
		}
		q.truncated++
	}
	return nil
}

// maxDamageFiles bounds the damaged spans kept for an operator: a failing
// medium must not fill the disk with them.
const maxDamageFiles = 8

// keepDamage sets the damaged bytes of a segment aside as
// <segment>.corrupt-<offset> before the segment is rewritten without
// them, keeping the newest maxDamageFiles such files. It returns the
// file's path, or "" when it could not be written (never fatal).
func (q *Queue) keepDamage(segPath string, d damage, data []byte) string {
	path := fmt.Sprintf("%s.corrupt-%d", segPath, d.off)
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		q.log.Warn("telemetry queue: cannot keep a damaged span", "path", path, "err", err)
		return ""
	}
	kept, _ := filepath.Glob(filepath.Join(q.dir, "seg-*.log.corrupt-*"))
	if len(kept) > maxDamageFiles {
		slices.SortFunc(kept, func(a, b string) int { return modTime(a).Compare(modTime(b)) })
		for _, old := range kept[:len(kept)-maxDamageFiles] {
			if old != path {
				os.Remove(old)
			}
		}
	}
	return path
}

func modTime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// damage is a span of a segment that holds no good record.
type damage struct {
	off, end int64
	cause    string
	records  uint64 // how many records it cost (at least 1)
}

type scanned struct {
	recs   []Record
	damage []damage
	end    int64 // end of the last good record (or of the damage after it)
}

// scan parses a segment's bytes. A record that fails to decode, or is out
// of order, is damage: the scan resumes at the next good record with a
// higher sequence number. Bad bytes after the last good record are a torn
// tail (end stops before them) unless they hold a complete record whose
// checksum fails, which is damage too.
func scan(b []byte, prev uint64) scanned {
	var sc scanned
	off := 0
	for off < len(b) {
		rec, n, err := decodeRecord(b[off:])
		if err == nil && rec.Seq > prev {
			sc.recs = append(sc.recs, rec)
			prev = rec.Seq
			off += n
			sc.end = int64(off)
			continue
		}
		if err == nil {
			err = fmt.Errorf("record %d out of order after %d", rec.Seq, prev)
		}
		next, nrec := resync(b, off+1, prev)
		if next < 0 {
			if errors.Is(err, errChecksum) && headerSize+int(recLen(b[off:])) == len(b)-off {
				// A whole record whose checksum fails ends the segment.
				sc.damage = append(sc.damage, damage{off: int64(off), end: int64(len(b)), cause: err.Error(), records: 1})
				sc.end = int64(len(b))
			}
			break
		}
		lost := nrec.Seq - prev - 1
		sc.damage = append(sc.damage, damage{off: int64(off), end: int64(next), cause: err.Error(), records: max(lost, 1)})
		off = next
	}
	return sc
}

// resync finds the first good record at or after from with a sequence
// number above prev; -1 if there is none.
func resync(b []byte, from int, prev uint64) (int, Record) {
	for i := from; i+headerSize <= len(b); i++ {
		if recLen(b[i:]) > MaxPayload || !hasMagic(b[i:]) {
			continue
		}
		if rec, _, err := decodeRecord(b[i:]); err == nil && rec.Seq > prev {
			return i, rec
		}
	}
	return -1, Record{}
}

// skipDamageLocked handles a record of s at off that no longer decodes
// (the medium changed under a running queue): it logs and counts the
// damage and returns where the next good record starts.
func (q *Queue) skipDamageLocked(f io.ReaderAt, s *segment, off int64, prev uint64, cause error) (int64, bool) {
	b := make([]byte, s.size-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		q.log.Error("telemetry queue: cannot read segment", "path", s.path, "offset", off, "err", err)
		return 0, false
	}
	if cause == nil {
		cause = fmt.Errorf("record out of order after %d", prev)
	}
	next, rec := resync(b, 1, prev)
	lost := uint64(1)
	end := s.size
	if next >= 0 {
		lost = max(rec.Seq-prev-1, 1)
		end = off + int64(next)
	}
	q.log.Error("telemetry queue: damaged record skipped", "path", s.path, "offset", off, "bytes", end-off, "cause", cause.Error(), "records", lost)
	// Counted apart from the persisted count: the next Open finds this
	// damage again, counts it there and rewrites the segment without it.
	q.corruptLive += lost
	last := s.last
	if next >= 0 {
		last = rec.Seq - 1
	}
	for seq := prev + 1; seq <= last; seq++ {
		q.pending[seq] = true
	}
	q.advanceLocked()
	if next < 0 {
		// Nothing good after it: the segment ends here for readers.
		s.size = off
		return 0, false
	}
	return end, true
}
