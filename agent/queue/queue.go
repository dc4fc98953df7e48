// Package queue is the agent's durable, bounded telemetry queue: an
// append-only log of checksummed records in segment files under
// state_dir/queue.
//
// Delivery is at least once: a record stays queued until Ack; after a
// crash everything after the last persisted ack cursor is sent again.
// When the queue would exceed its byte bound, the oldest segment is
// dropped whole and its unacknowledged records are counted in Dropped.
// A torn record at the tail of a segment (power cut mid-write) is cut
// off at open; nothing before it is lost.
//
// Fsync policy: "always" fsyncs each record before Append returns;
// "batch" fsyncs within FsyncInterval; "never" leaves it to the kernel.
// The ack cursor is written lazily (at most every FsyncInterval and on
// Close), which can only cause duplicates, never loss; it is written
// durably before any segment file is deleted.
package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"devid/hal/atomicfile"
)

// Fsync policies.
const (
	FsyncAlways = "always"
	FsyncBatch  = "batch"
	FsyncNever  = "never"
)

// Options bound and tune the queue.
type Options struct {
	MaxBytes      int64
	SegmentBytes  int64
	Fsync         string
	FsyncInterval time.Duration
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("queue closed")

// ErrTooLarge is returned for a payload over MaxPayload or a segment.
var ErrTooLarge = errors.New("message too large for the queue")

const cursorFile = "cursor.json"

type cursor struct {
	Schema  int    `json:"schema"`
	Acked   uint64 `json:"acked"`
	Dropped uint64 `json:"dropped"`
}

type segment struct {
	path        string
	first, last uint64 // last == first-1 when empty
	size        int64
}

func (s *segment) count() uint64 { return s.last + 1 - s.first }

// Queue is safe for concurrent use.
type Queue struct {
	dir string
	opt Options

	mu          sync.Mutex
	segs        []*segment
	w           *os.File
	nextSeq     uint64
	acked       uint64
	pending     map[uint64]bool // acked out of order, all > acked
	dropped     uint64
	truncated   int // torn/corrupt tails cut at open
	dataDirty   bool
	cursorDirty bool
	flushTimer  *time.Timer
	notify      chan struct{}
	closed      bool
	// read position cache: the offset in rseg of record rseq.
	rseg *segment
	rseq uint64
	roff int64
}

// Stats is a snapshot of the queue's counters.
type Stats struct {
	// Depth is how many records wait for an ack.
	Depth uint64 `json:"depth"`
	// Bytes is the queue's size on disk.
	Bytes int64 `json:"bytes"`
	// Dropped counts records lost to the size bound (drop-oldest).
	Dropped uint64 `json:"dropped"`
	// Acked is the highest sequence number with everything up to it acked.
	Acked uint64 `json:"acked"`
	// Next is the sequence number the next Append gets.
	Next uint64 `json:"next"`
	// Truncated counts corrupt or torn tails cut off when the queue was opened.
	Truncated int `json:"truncated,omitempty"`
}

// Open opens or creates the queue in dir, recovering from a crash.
func Open(dir string, opt Options) (*Queue, error) {
	if opt.SegmentBytes <= headerSize {
		return nil, fmt.Errorf("queue: segment size %d too small", opt.SegmentBytes)
	}
	if opt.MaxBytes < 2*opt.SegmentBytes {
		return nil, fmt.Errorf("queue: max bytes %d below two segments", opt.MaxBytes)
	}
	if opt.FsyncInterval <= 0 {
		opt.FsyncInterval = time.Second
	}
	if opt.Fsync == "" {
		opt.Fsync = FsyncBatch
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	q := &Queue{dir: dir, opt: opt, pending: map[uint64]bool{}, notify: make(chan struct{}, 1)}
	if b, err := os.ReadFile(filepath.Join(dir, cursorFile)); err == nil {
		var c cursor
		if err := json.Unmarshal(b, &c); err == nil && c.Schema == 1 {
			q.acked, q.dropped = c.Acked, c.Dropped
		}
		// An unreadable cursor only means resending: at least once.
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "seg-") && strings.HasSuffix(e.Name(), ".log") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names) // zero-padded first sequence numbers sort numerically
	maxSeq := q.acked
	for _, name := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".log"), 10, 64)
		if err != nil {
			continue
		}
		s, err := q.recover(filepath.Join(dir, name), first)
		if err != nil {
			return nil, err
		}
		if s.count() == 0 && s.size == 0 && len(names) > 1 {
			os.Remove(s.path)
			continue
		}
		q.segs = append(q.segs, s)
		if s.count() > 0 && s.last > maxSeq {
			maxSeq = s.last
		}
	}
	q.nextSeq = maxSeq + 1
	// Everything wholly acked except the last segment can go.
	q.gcLocked()
	if n := len(q.segs); n > 0 && q.segs[n-1].count() == 0 && q.segs[n-1].first != q.nextSeq {
		os.Remove(q.segs[n-1].path)
		q.segs = q.segs[:n-1]
	}
	if len(q.segs) == 0 || q.segs[len(q.segs)-1].last+1 != q.nextSeq {
		if err := q.newSegmentLocked(); err != nil {
			return nil, err
		}
	} else {
		s := q.segs[len(q.segs)-1]
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		q.w = f
	}
	return q, nil
}

// recover scans one segment, cutting off a torn or corrupt tail.
func (q *Queue) recover(path string, first uint64) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	defer f.Close()
	s := &segment{path: path, first: first, last: first - 1}
	var off int64
	for {
		rec, n, err := readRecordAt(f, off)
		if err == io.EOF {
			break
		}
		if err != nil || rec.Seq != s.last+1 {
			// Torn write or corruption: keep what came before it.
			if terr := f.Truncate(off); terr != nil {
				return nil, fmt.Errorf("queue: truncate %s: %w", path, terr)
			}
			f.Sync()
			q.truncated++
			break
		}
		s.last = rec.Seq
		off += int64(n)
	}
	s.size = off
	return s, nil
}

// readRecordAt reads the record at off. io.EOF means a clean end.
func readRecordAt(f *os.File, off int64) (Record, int, error) {
	var hdr [headerSize]byte
	n, err := f.ReadAt(hdr[:], off)
	if n == 0 && err == io.EOF {
		return Record{}, 0, io.EOF
	}
	if n < headerSize {
		return Record{}, 0, errShort
	}
	plen := int(uint32(hdr[4]) | uint32(hdr[5])<<8 | uint32(hdr[6])<<16 | uint32(hdr[7])<<24)
	if plen > MaxPayload {
		return Record{}, 0, errTooLarge
	}
	buf := make([]byte, headerSize+plen)
	copy(buf, hdr[:])
	if plen > 0 {
		if m, _ := f.ReadAt(buf[headerSize:], off+headerSize); m < plen {
			return Record{}, 0, errShort
		}
	}
	return decodeRecord(buf)
}

func (q *Queue) newSegmentLocked() error {
	if q.w != nil {
		q.w.Sync()
		q.w.Close()
		q.w = nil
	}
	path := filepath.Join(q.dir, fmt.Sprintf("seg-%020d.log", q.nextSeq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	atomicfile.SyncDir(q.dir)
	q.w = f
	q.segs = append(q.segs, &segment{path: path, first: q.nextSeq, last: q.nextSeq - 1})
	return nil
}

// Append adds payload to the queue and returns its sequence number.
// With Fsync "always" the record is on stable storage when it returns.
func (q *Queue) Append(payload []byte) (uint64, error) {
	if len(payload) > MaxPayload || int64(len(payload)+headerSize) > q.opt.SegmentBytes {
		return 0, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(payload))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, ErrClosed
	}
	rec := encodeRecord(q.nextSeq, payload)
	cur := q.segs[len(q.segs)-1]
	if cur.size > 0 && cur.size+int64(len(rec)) > q.opt.SegmentBytes {
		if err := q.newSegmentLocked(); err != nil {
			return 0, err
		}
		cur = q.segs[len(q.segs)-1]
	}
	// Drop the oldest segments until the new record fits the bound.
	for q.bytesLocked()+int64(len(rec)) > q.opt.MaxBytes && len(q.segs) > 1 {
		if err := q.dropOldestLocked(); err != nil {
			return 0, err
		}
	}
	if _, err := q.w.Write(rec); err != nil {
		// A partial write is cut off at the next open; stop using this segment.
		q.newSegmentLocked()
		return 0, fmt.Errorf("queue: append: %w", err)
	}
	seq := q.nextSeq
	q.nextSeq++
	cur.last = seq
	cur.size += int64(len(rec))
	switch q.opt.Fsync {
	case FsyncAlways:
		if err := q.w.Sync(); err != nil {
			return seq, fmt.Errorf("queue: fsync: %w", err)
		}
	case FsyncBatch:
		q.dataDirty = true
		q.scheduleFlushLocked()
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return seq, nil
}

func (q *Queue) bytesLocked() int64 {
	var n int64
	for _, s := range q.segs {
		n += s.size
	}
	return n
}

func (q *Queue) dropOldestLocked() error {
	s := q.segs[0]
	if s.count() > 0 && s.last > q.acked {
		lost := s.last - max(q.acked, s.first-1)
		for seq := range q.pending {
			if seq <= s.last {
				lost--
				delete(q.pending, seq)
			}
		}
		q.dropped += lost
		q.acked = s.last
		q.advanceLocked()
	}
	return q.removeFirstLocked()
}

// removeFirstLocked deletes the first segment after persisting the cursor,
// so a deleted segment is never "unacked" after a crash.
func (q *Queue) removeFirstLocked() error {
	if err := q.writeCursorLocked(); err != nil {
		return err
	}
	s := q.segs[0]
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("queue: %w", err)
	}
	q.segs = q.segs[1:]
	if q.rseg == s {
		q.rseg = nil
	}
	return nil
}

func (q *Queue) gcLocked() {
	for len(q.segs) > 1 && q.segs[0].last <= q.acked {
		if q.removeFirstLocked() != nil {
			return
		}
	}
}

func (q *Queue) advanceLocked() {
	for q.pending[q.acked+1] {
		delete(q.pending, q.acked+1)
		q.acked++
	}
	for seq := range q.pending {
		if seq <= q.acked {
			delete(q.pending, seq)
		}
	}
}

// Ack marks seq delivered. Acks may come out of order.
func (q *Queue) Ack(seq uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if seq <= q.acked || seq >= q.nextSeq {
		return
	}
	q.pending[seq] = true
	q.advanceLocked()
	q.cursorDirty = true
	if q.opt.Fsync != FsyncNever {
		q.scheduleFlushLocked()
	}
	q.gcLocked()
}

// Next returns up to max records (and about maxBytes of payload) with
// sequence numbers above after that are not acked yet, oldest first.
func (q *Queue) Next(after uint64, max int, maxBytes int) ([]Record, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, ErrClosed
	}
	if after < q.acked {
		after = q.acked
	}
	var out []Record
	size := 0
	for _, s := range q.segs {
		if s.count() == 0 || s.last <= after {
			continue
		}
		f, err := os.Open(s.path)
		if err != nil {
			return out, fmt.Errorf("queue: %w", err)
		}
		var off int64
		want := max64(after+1, s.first)
		if q.rseg == s && q.rseq <= want {
			off = q.roff
		}
		for len(out) < max && size < maxBytes {
			rec, n, err := readRecordAt(f, off)
			if err == io.EOF || (err == nil && rec.Seq > s.last) {
				break
			}
			if err != nil {
				f.Close()
				return out, fmt.Errorf("queue: read %s: %w", s.path, err)
			}
			if rec.Seq >= want && !q.pending[rec.Seq] {
				p := make([]byte, len(rec.Payload))
				copy(p, rec.Payload)
				out = append(out, Record{Seq: rec.Seq, Payload: p})
				size += len(p)
			}
			off += int64(n)
			q.rseg, q.rseq, q.roff = s, rec.Seq+1, off
		}
		f.Close()
		if len(out) >= max || size >= maxBytes {
			break
		}
	}
	return out, nil
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// Notify returns a channel that receives after each Append.
func (q *Queue) Notify() <-chan struct{} { return q.notify }

// Stats returns the current counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	var depth uint64
	for _, s := range q.segs {
		if s.count() > 0 && s.last > q.acked {
			depth += s.last - max64(q.acked, s.first-1)
		}
	}
	depth -= uint64(len(q.pending))
	return Stats{Depth: depth, Bytes: q.bytesLocked(), Dropped: q.dropped, Acked: q.acked, Next: q.nextSeq, Truncated: q.truncated}
}

func (q *Queue) scheduleFlushLocked() {
	if q.flushTimer != nil {
		return
	}
	q.flushTimer = time.AfterFunc(q.opt.FsyncInterval, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.flushTimer = nil
		if !q.closed {
			q.flushLocked()
		}
	})
}

func (q *Queue) flushLocked() error {
	var err error
	if q.dataDirty && q.w != nil {
		err = q.w.Sync()
		q.dataDirty = false
	}
	if q.cursorDirty {
		if cerr := q.writeCursorLocked(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// Sync forces queued records and the ack cursor to stable storage.
func (q *Queue) Sync() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	q.dataDirty = q.w != nil
	return q.flushLocked()
}

func (q *Queue) writeCursorLocked() error {
	b, _ := json.Marshal(cursor{Schema: 1, Acked: q.acked, Dropped: q.dropped})
	if err := atomicfile.WriteFile(filepath.Join(q.dir, cursorFile), b, 0o600); err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	q.cursorDirty = false
	return nil
}

// Close flushes and closes the queue.
func (q *Queue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.dataDirty = q.w != nil
	err := q.flushLocked()
	q.closed = true
	if q.flushTimer != nil {
		q.flushTimer.Stop()
	}
	if q.w != nil {
		q.w.Close()
	}
	return err
}
