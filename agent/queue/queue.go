// Package queue is the agent's durable, bounded telemetry queue: an
// append-only log of checksummed records in segment files under
// state_dir/queue.
//
// Delivery is at least once: a record stays queued until Ack; after a
// crash everything after the persisted ack cursor (queue/cursor) is sent
// again. The cursor is written promptly after each Ack (or, with
// Options.CursorEvery, once that many acks are not in it yet or the queue
// is drained), and Durable says how far it is on disk, so a sender that
// keeps at most N records in flight beyond Durable resends at most N
// after a crash.
//
// When the queue would exceed its byte bound, the oldest segment is
// dropped whole and its unacknowledged records are counted in Dropped.
// An Append that fails (a full disk) leaves nothing behind: the partial
// record is cut off at once, or, when even that fails, the segment is
// sealed before it and the next Append starts a segment under a new name;
// the tail is cut at the next open. Segment names are never reused.
// A damaged record is found by its checksum, skipped, logged and counted
// (Stats.Corrupt); every good record after it is kept.
//
// Fsync policy: "always" fsyncs each record before Append returns;
// "batch" fsyncs within FsyncInterval; "never" leaves it to the kernel.
package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
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
	// CursorEvery > 0 writes the ack cursor once that many acks are not
	// in it yet, or when everything is acked, instead of after every Ack
	// (one file replacement per PUBACK batch is most of the agent's CPU
	// under load); the rest is written within FsyncInterval. A sender
	// bounded by SendLimit(window) needs CursorEvery <= window.
	CursorEvery uint64
	// MemoryBytes bounds the records kept in memory while the disk
	// refuses writes (memory.go); 0: an Append that cannot be written
	// fails.
	MemoryBytes int64
	// Log receives damage reports (corrupt records, a damaged cursor).
	Log *slog.Logger
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("queue closed")

// ErrTooLarge is returned for a payload over MaxPayload or a segment.
var ErrTooLarge = errors.New("message too large for the queue")

type segment struct {
	path        string
	first, last uint64 // last == first-1 when empty
	gen         int    // tells apart segments that start at the same seq
	// size is where the segment's good records end; readers never read
	// past it (a sealed segment may hold a torn record after it).
	size int64
	// sealed: a torn tail could not be cut; nothing is appended to it.
	sealed bool
	// mem holds the records of the memory tail, which has no path.
	mem []byte
}

func (s *segment) count() uint64 { return s.last + 1 - s.first }

// Queue is safe for concurrent use.
type Queue struct {
	dir string
	opt Options
	log *slog.Logger

	mu          sync.Mutex
	segs        []*segment
	w           *os.File // nil: the next Append starts a new segment
	nextSeq     uint64
	acked       uint64
	durable     uint64          // acked as last written to the cursor file
	pending     map[uint64]bool // acked out of order, all > acked
	dropped     uint64
	corrupt     uint64 // found at open, persisted
	corruptLive uint64 // found by a running queue; found again at the next open
	setAside    uint64
	truncated   int    // torn tails cut at open
	cursorAside string // where a damaged cursor was set aside
	diskErr     string // why the memory tail exists (memory.go)
	dataDirty   bool
	cursorDirty bool
	// cursorUnsynced: the cursor was last written without fsync.
	cursorUnsynced bool
	// cursorF is the cursor file, open for updates in place (cursor.go);
	// nil until the first write. cursorGen is the generation of its
	// newer slot.
	cursorF   *os.File
	cursorGen uint64
	// legacyCursor: a cursor.json of an older agent is there, to remove
	// once the cursor file holds what it said.
	legacyCursor bool
	// cursorFailing: the last cursor write failed (a full disk).
	cursorFailing bool
	flushTimer    *time.Timer
	notify        chan struct{}
	cursorKick    chan struct{}
	flusherDone   chan struct{}
	closed        bool
	// read position cache: the offset in rseg of record rseq.
	rseg *segment
	rseq uint64
	roff int64
}

// segName is a segment's file name: its first sequence number, and a
// generation when an earlier segment began at the same number.
func segName(first uint64, gen int) string {
	if gen == 0 {
		return fmt.Sprintf("seg-%020d.log", first)
	}
	return fmt.Sprintf("seg-%020d-%d.log", first, gen)
}

// parseSegName is the inverse of segName.
func parseSegName(name string) (first uint64, gen int, ok bool) {
	rest, found := strings.CutPrefix(name, "seg-")
	if !found {
		return 0, 0, false
	}
	if rest, found = strings.CutSuffix(rest, ".log"); !found {
		return 0, 0, false
	}
	num, g, hasGen := strings.Cut(rest, "-")
	first, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if hasGen {
		if gen, err = strconv.Atoi(g); err != nil || gen < 1 {
			return 0, 0, false
		}
	}
	return first, gen, true
}

// listSegments returns dir's segments in order (by first seq, then gen).
func listSegments(dir string) ([]*segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []*segment
	for _, e := range ents {
		if first, gen, ok := parseSegName(e.Name()); ok {
			segs = append(segs, &segment{path: filepath.Join(dir, e.Name()), first: first, last: first - 1, gen: gen})
		}
	}
	slices.SortFunc(segs, func(a, b *segment) int {
		if a.first != b.first {
			if a.first < b.first {
				return -1
			}
			return 1
		}
		return a.gen - b.gen
	})
	return segs, nil
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
	mkdirErr := os.MkdirAll(dir, 0o700)
	if mkdirErr != nil && opt.MemoryBytes <= 0 {
		return nil, fmt.Errorf("queue: %w", mkdirErr)
	}
	q := &Queue{dir: dir, opt: opt, log: opt.Log, pending: map[uint64]bool{},
		notify: make(chan struct{}, 1), cursorKick: make(chan struct{}, 1), flusherDone: make(chan struct{})}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	c, err := q.loadCursor()
	if err != nil {
		return nil, err
	}
	q.acked, q.dropped, q.corrupt, q.setAside = c.Acked, c.Dropped, c.Corrupt, c.SetAside
	segs, err := listSegments(dir)
	if err != nil && mkdirErr != nil {
		// No queue directory and none can be made: memory only, until
		// the disk takes writes.
		q.diskErr = mkdirErr.Error()
		q.log.Error("telemetry queue: cannot create the queue directory; keeping messages in memory until it can", "dir", dir, "err", mkdirErr)
		q.nextSeq = q.acked + 1
		q.durable = q.acked
		go q.flusher()
		return q, nil
	}
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if len(segs) > 0 && segs[0].first > 0 {
		// What came before the oldest segment left was acknowledged
		// (segments go only once wholly acked): this matters when the
		// cursor was lost or set aside.
		q.acked = max(q.acked, segs[0].first-1)
	}
	maxSeq := q.acked
	for i, s := range segs {
		// Records follow the previous segment's; the oldest may also
		// hold records already acked.
		floor := q.acked
		if i > 0 && len(q.segs) > 0 {
			floor = q.segs[len(q.segs)-1].last
		} else {
			floor = min(floor, s.first-1)
		}
		if err := q.recover(s, floor); err != nil {
			return nil, err
		}
		if s.count() == 0 {
			os.Remove(s.path)
			continue
		}
		q.segs = append(q.segs, s)
		maxSeq = max(maxSeq, s.last)
	}
	q.advanceLocked()
	q.nextSeq = maxSeq + 1
	// Everything wholly acked except the last segment can go.
	q.gcLocked()
	if n := len(q.segs); n > 0 && q.segs[n-1].last+1 == q.nextSeq && !q.segs[n-1].sealed {
		s := q.segs[n-1]
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil && opt.MemoryBytes <= 0 {
			return nil, fmt.Errorf("queue: %w", err)
		}
		// Else a read-only disk: the next Append starts a segment, or
		// goes to memory.
		q.w = f
	}
	if q.corrupt != c.Corrupt || q.cursorAside != "" || q.legacyCursor {
		q.writeCursorLocked(true)
	}
	q.durable = q.acked
	go q.flusher()
	return q, nil
}

// newSegmentLocked starts a segment for record q.nextSeq under a name no
// other segment of this queue has had.
func (q *Queue) newSegmentLocked() error {
	if q.w != nil {
		q.w.Sync()
		q.w.Close()
		q.w = nil
	}
	gen := 0
	for _, s := range q.segs {
		if s.first == q.nextSeq {
			gen = max(gen, s.gen+1)
		}
	}
	for ; ; gen++ {
		path := filepath.Join(q.dir, segName(q.nextSeq, gen))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue // left by a crash; never reuse a name
		}
		if err != nil {
			return fmt.Errorf("queue: %w", err)
		}
		if err := atomicfile.SyncDir(q.dir); err != nil {
			f.Close()
			os.Remove(path)
			return fmt.Errorf("queue: %w", err)
		}
		q.w = f
		q.segs = append(q.segs, &segment{path: path, first: q.nextSeq, last: q.nextSeq - 1, gen: gen})
		return nil
	}
}

// Append adds payload to the queue and returns its sequence number.
// With Fsync "always" the record is on stable storage when it returns.
// On error nothing was queued.
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
	if q.memTailLocked() != nil {
		if err := q.persistMemLocked(); err != nil {
			return q.appendMemLocked(rec, err)
		}
	}
	if q.w != nil {
		if cur := q.segs[len(q.segs)-1]; cur.size > 0 && cur.size+int64(len(rec)) > q.opt.SegmentBytes {
			q.w.Sync()
			q.w.Close()
			q.w = nil
		}
	}
	// Drop the oldest segments until the new record fits the bound.
	for q.bytesLocked()+int64(len(rec)) > q.opt.MaxBytes && len(q.segs) > 1 {
		if err := q.dropOldestLocked(); err != nil {
			return q.appendMemLocked(rec, err)
		}
	}
	if q.w == nil {
		if err := q.newSegmentLocked(); err != nil {
			return q.appendMemLocked(rec, err)
		}
	}
	cur := q.segs[len(q.segs)-1]
	if _, err := q.w.Write(rec); err != nil {
		q.cutLocked(cur)
		return q.appendMemLocked(rec, fmt.Errorf("queue: append: %w", err))
	}
	if q.opt.Fsync == FsyncAlways {
		if err := q.w.Sync(); err != nil {
			q.cutLocked(cur)
			return q.appendMemLocked(rec, fmt.Errorf("queue: fsync: %w", err))
		}
	}
	seq := q.nextSeq
	q.nextSeq++
	cur.last = seq
	cur.size += int64(len(rec))
	if q.opt.Fsync == FsyncBatch {
		q.dataDirty = true
		q.scheduleFlushLocked()
	}
	q.wake()
	return seq, nil
}

// cutLocked removes what a failed append left after cur's good records.
// If the file cannot be cut, the segment is sealed: readers stop at its
// size, the next Append starts a new segment, the next Open cuts the tail.
func (q *Queue) cutLocked(cur *segment) {
	if err := q.w.Truncate(cur.size); err == nil {
		return
	}
	q.w.Close()
	q.w = nil
}

func (q *Queue) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// bytesLocked is the queue's size on disk (the memory tail has its own
// bound).
func (q *Queue) bytesLocked() int64 {
	var n int64
	for _, s := range q.segs {
		if !s.inMemory() {
			n += s.size
		}
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
	if err := q.writeCursorLocked(true); err != nil {
		return err
	}
	s := q.segs[0]
	if s.inMemory() {
		return nil // the memory tail is never dropped for the disk bound
	}
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

// Ack marks seq delivered. Acks may come out of order. The cursor is
// written soon after; Durable tells when.
func (q *Queue) Ack(seq uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || seq <= q.acked || seq >= q.nextSeq {
		return
	}
	q.pending[seq] = true
	q.advanceLocked()
	q.cursorDirty = true
	if every := q.opt.CursorEvery; every == 0 || q.acked+1 >= q.nextSeq || q.acked-q.durable >= every {
		select {
		case q.cursorKick <- struct{}{}:
		default:
		}
	} else {
		q.scheduleFlushLocked()
	}
	q.gcLocked()
}

// Durable returns the acked sequence number as written to the cursor file:
// after a crash, the queue resends from there.
func (q *Queue) Durable() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.durable
}

// SendLimit is the highest sequence number a sender that keeps window
// records in flight may send: window beyond the cursor on disk, so a crash
// resends at most window. While the cursor cannot be written (a full
// disk) there is no limit: delivery goes on, and a crash then may resend
// more (the log says so).
func (q *Queue) SendLimit(window uint64) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cursorFailing {
		return math.MaxUint64
	}
	return q.durable + window
}

// Next returns up to max records (and about maxBytes of payload) with
// sequence numbers above after that are not acked yet, oldest first.
func (q *Queue) Next(after uint64, max int, maxBytes int) ([]Record, error) {
	return q.NextUpTo(after, math.MaxUint64, max, maxBytes)
}

// NextUpTo is Next without records above upTo (a sender's SendLimit).
// It reads no further than it returns, which keeps its read position
// cache valid for the next call.
func (q *Queue) NextUpTo(after, upTo uint64, max int, maxBytes int) ([]Record, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, ErrClosed
	}
	if after < q.acked {
		after = q.acked
	}
	if after >= upTo {
		// The sender's window is full: nothing to read (and no file to
		// open on every Append that wakes it).
		return nil, nil
	}
	var out []Record
	size := 0
	for _, s := range q.segs {
		if s.count() == 0 || s.last <= after {
			continue
		}
		if s.first > upTo {
			break
		}
		f, err := openSegment(s)
		if err != nil {
			return out, fmt.Errorf("queue: %w", err)
		}
		var off int64
		prev := s.first - 1
		want := max64(after+1, s.first)
		if q.rseg == s && q.rseq <= want {
			off, prev = q.roff, q.rseq-1
		}
		for len(out) < max && size < maxBytes && off < s.size {
			rec, n, err := readRecordAt(f, off)
			if err != nil || rec.Seq <= prev {
				// Damaged since it was opened: skip to the next good one.
				next, ok := q.skipDamageLocked(f, s, off, prev, err)
				if !ok {
					break
				}
				off = next
				continue
			}
			if rec.Seq > upTo {
				break
			}
			if rec.Seq >= want && !q.pending[rec.Seq] {
				p := make([]byte, len(rec.Payload))
				copy(p, rec.Payload)
				out = append(out, Record{Seq: rec.Seq, Payload: p})
				size += len(p)
			}
			prev = rec.Seq
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

// Notify returns a channel that receives after each Append and after
// each cursor write.
func (q *Queue) Notify() <-chan struct{} { return q.notify }

func (q *Queue) scheduleFlushLocked() {
	if q.flushTimer != nil {
		return
	}
	q.flushTimer = time.AfterFunc(q.opt.FsyncInterval, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.flushTimer = nil
		if q.closed {
			return
		}
		q.persistMemLocked()
		q.flushLocked()
		if q.cursorDirty || q.cursorUnsynced || q.dataDirty || q.memTailLocked() != nil {
			q.scheduleFlushLocked() // failed (a full disk): try again later
		}
		q.wake()
	})
}

func (q *Queue) flushLocked() error {
	var err error
	if q.dataDirty && q.w != nil {
		err = q.w.Sync()
		q.dataDirty = false
	}
	if q.cursorDirty || q.cursorUnsynced {
		if cerr := q.writeCursorLocked(true); cerr != nil && err == nil {
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

// Close flushes and closes the queue.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	if perr := q.persistMemLocked(); perr != nil && q.memRecordsLocked() > 0 {
		q.log.Error("telemetry queue: closing with messages that only memory held; they are lost", "records", q.memRecordsLocked(), "err", perr)
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
	if q.cursorF != nil {
		q.cursorF.Close()
	}
	close(q.cursorKick)
	q.mu.Unlock()
	<-q.flusherDone
	return err
}
