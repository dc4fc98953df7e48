package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"devid/hal/atomicfile"
)

// The ack cursor is the file queue/cursor: two fixed-size slots, each one
// text line with a generation number and a CRC-32C, in separate disk
// sectors (offsets 0 and slotStride). An update rewrites the slot that
// holds the older generation, in place, with one write: no new file, no
// rename, no directory update. A write torn by a power cut damages that
// slot only; the other still holds the cursor before it, so at worst
// records are sent again. Under load the cursor is written once every
// CursorEvery acks, and a file replaced each time cost a fifth of the
// agent's CPU per message and a journal commit per write on flash
// (docs/benchmarks.md).
//
// Agents before this format kept cursor.json (schema 1); Open carries it
// over and removes it.

// cursorSchema is the slot format this agent writes. A slot with a newer
// one is never overwritten: Open refuses it (ErrNewerSchema).
const cursorSchema = 2

const (
	cursorFile       = "cursor"
	legacyCursorFile = "cursor.json"
	legacySchema     = 1
	cursorMagic      = "devid-queue-cursor"
	slotSize         = 128 // bytes, the last a newline
	slotStride       = 512 // slot i starts at i*slotStride: one sector each
)

// ErrNewerSchema is returned by Open when the cursor was written by a
// newer agent: overwriting it could destroy what that agent recorded.
var ErrNewerSchema = errors.New("queue cursor has a newer schema")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// cursor is how far the queue is acknowledged, and the counters that must
// survive a restart.
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

// slotFields are the names in a slot line, in order, after the magic
// and the schema.
var slotFields = []string{"gen", "acked", "dropped", "corrupt", "set_aside"}

// encodeSlot is one slot: "devid-queue-cursor 2 gen=G acked=A dropped=D
// corrupt=C set_aside=S crc=XXXXXXXX", padded with spaces to slotSize-1,
// and a newline. The CRC-32C covers the text before " crc=".
func encodeSlot(gen uint64, c cursor) []byte {
	body := fmt.Sprintf("%s %d gen=%d acked=%d dropped=%d corrupt=%d set_aside=%d",
		cursorMagic, cursorSchema, gen, c.Acked, c.Dropped, c.Corrupt, c.SetAside)
	line := fmt.Sprintf("%s crc=%08x", body, crc32.Checksum([]byte(body), castagnoli))
	b := make([]byte, slotSize)
	for i := range b {
		b[i] = ' '
	}
	copy(b, line) // at most 18+2+5*(11+20) < slotSize-1 bytes
	b[slotSize-1] = '\n'
	return b
}

// parseSlot parses one slot. A slot of a newer schema with a good CRC is
// ErrNewerSchema; any other error means the slot is damaged or was
// never written.
func parseSlot(b []byte) (gen uint64, c cursor, err error) {
	line := strings.TrimRight(string(b), " \n\x00")
	body, sum, ok := strings.Cut(line, " crc=")
	if !ok {
		return 0, cursor{}, errors.New("no checksum")
	}
	want, err := strconv.ParseUint(sum, 16, 32)
	if err != nil || len(sum) != 8 {
		return 0, cursor{}, fmt.Errorf("checksum %q is not 8 hex digits", sum)
	}
	if got := crc32.Checksum([]byte(body), castagnoli); got != uint32(want) {
		return 0, cursor{}, fmt.Errorf("checksum mismatch (%08x, slot says %08x)", got, want)
	}
	f := strings.Fields(body)
	if len(f) < 2 || f[0] != cursorMagic {
		return 0, cursor{}, errors.New("not a queue cursor slot")
	}
	schema, err := strconv.Atoi(f[1])
	switch {
	case err != nil || schema < 1:
		return 0, cursor{}, fmt.Errorf("schema %q is not valid", f[1])
	case schema > cursorSchema:
		return 0, cursor{}, fmt.Errorf("%w: schema %d, this agent writes %d", ErrNewerSchema, schema, cursorSchema)
	case schema < cursorSchema || len(f) != 2+len(slotFields):
		return 0, cursor{}, fmt.Errorf("schema %d slot has %d fields", schema, len(f))
	}
	var v [5]uint64
	for i, name := range slotFields {
		val, ok := strings.CutPrefix(f[2+i], name+"=")
		if !ok {
			return 0, cursor{}, fmt.Errorf("field %d is %q, want %s=N", 2+i, f[2+i], name)
		}
		if v[i], err = strconv.ParseUint(val, 10, 64); err != nil {
			return 0, cursor{}, fmt.Errorf("%s=%q is not a number", name, val)
		}
	}
	return v[0], cursor{Schema: schema, Acked: v[1], Dropped: v[2], Corrupt: v[3], SetAside: v[4]}, nil
}

// parseCursorFile reads the slots of a cursor file and returns the newest
// good one. A file with no good slot is damaged.
func parseCursorFile(b []byte) (gen uint64, c cursor, err error) {
	found := false
	var errs []string
	for i := range 2 {
		off := i * slotStride
		if off+slotSize > len(b) {
			errs = append(errs, fmt.Sprintf("slot %d: missing (file is %d bytes)", i, len(b)))
			continue
		}
		g, sc, serr := parseSlot(b[off : off+slotSize])
		if errors.Is(serr, ErrNewerSchema) {
			return 0, cursor{}, serr
		}
		if serr != nil {
			errs = append(errs, fmt.Sprintf("slot %d: %v", i, serr))
			continue
		}
		if !found || g > gen {
			gen, c, found = g, sc, true
		}
	}
	if !found {
		return 0, cursor{}, errors.New(strings.Join(errs, "; "))
	}
	return gen, c, nil
}

// parseLegacyCursor parses cursor.json (schema 1). A newer schema is
// ErrNewerSchema; any other error means the file is damaged.
func parseLegacyCursor(b []byte) (cursor, error) {
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return cursor{}, fmt.Errorf("not JSON: %w", err)
	}
	switch {
	case head.Schema == nil:
		return cursor{}, errors.New("no schema field")
	case *head.Schema > legacySchema:
		return cursor{}, fmt.Errorf("%w: schema %d, this agent reads %d", ErrNewerSchema, *head.Schema, legacySchema)
	case *head.Schema < 1:
		return cursor{}, fmt.Errorf("schema %d is not valid", *head.Schema)
	}
	var c cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return cursor{}, fmt.Errorf("schema %d: %w", c.Schema, err)
	}
	return c, nil
}

// storedCursor is the cursor as dir holds it, for Open and Inspect.
type storedCursor struct {
	path string // the file read; "" when there is none (the zero cursor)
	gen  uint64 // its newer slot's generation (0 for cursor.json)
	c    cursor
	bad  error // why the file cannot be used: damaged, or ErrNewerSchema
}

// readCursor reads dir's cursor: queue/cursor, or else a cursor.json left
// by an older agent. The error is one of reading, not of content.
func readCursor(dir string) (storedCursor, error) {
	st := storedCursor{path: filepath.Join(dir, cursorFile)}
	b, err := os.ReadFile(st.path)
	if err == nil {
		st.gen, st.c, st.bad = parseCursorFile(b)
		return st, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	st.path = filepath.Join(dir, legacyCursorFile)
	if b, err = os.ReadFile(st.path); errors.Is(err, os.ErrNotExist) {
		return storedCursor{c: cursor{Schema: cursorSchema}}, nil
	} else if err != nil {
		return st, err
	}
	if st.c, st.bad = parseLegacyCursor(b); st.bad == nil {
		st.c.Schema = cursorSchema
	}
	return st, nil
}

// loadCursor reads dir's cursor (readCursor). A missing cursor is the
// zero cursor; a damaged one is logged with its path and cause and
// renamed to NAME.corrupt-<time> (so it is never overwritten in silence),
// and the queue starts from the zero cursor: at worst records are resent.
func (q *Queue) loadCursor() (cursor, error) {
	st, err := readCursor(q.dir)
	if err != nil {
		return cursor{}, fmt.Errorf("queue: %w", err)
	}
	if st.bad != nil {
		return q.damagedCursor(st.path, st.bad)
	}
	q.cursorGen = st.gen
	// A cursor.json to carry over (the first cursor write removes it), or
	// one a migration did not get to remove.
	q.legacyCursor = fileExists(filepath.Join(q.dir, legacyCursorFile))
	return st.c, nil
}

// damagedCursor refuses a newer cursor, and sets a damaged one aside.
func (q *Queue) damagedCursor(path string, err error) (cursor, error) {
	if errors.Is(err, ErrNewerSchema) {
		return cursor{}, fmt.Errorf("queue: %s: %w; refusing to overwrite it (run the newer agent, or move the queue directory away)", path, err)
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if rerr := os.Rename(path, aside); rerr != nil {
		return cursor{}, fmt.Errorf("queue: %s is damaged (%v) and cannot be set aside: %w", path, err, rerr)
	}
	q.log.Error("telemetry queue cursor is damaged; set aside, queued messages may be sent again",
		"path", path, "cause", err.Error(), "set_aside_as", aside)
	q.cursorAside = aside
	return cursor{Schema: cursorSchema}, nil
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
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

// writeCursorLocked writes the current cursor into the older slot. With
// sync it is fsynced and survives a power cut; without, it survives a
// crash of the agent (the kernel has it), costs no fsync per PUBACK
// batch, and a synced write follows within fsync_interval. A power cut in
// between leaves an older cursor: more duplicates, never a loss. Before a
// segment is deleted the write is always synced.
func (q *Queue) writeCursorLocked(sync bool) error {
	c := cursor{Schema: cursorSchema, Acked: q.acked, Dropped: q.dropped, Corrupt: q.corrupt, SetAside: q.setAside}
	path := filepath.Join(q.dir, cursorFile)
	written := false
	if q.cursorF == nil {
		var err error
		if written, err = q.openCursorLocked(path, c); err != nil {
			return err
		}
	}
	if !written {
		gen := q.cursorGen + 1
		if _, err := q.cursorF.WriteAt(encodeSlot(gen, c), int64(gen%2)*slotStride); err != nil {
			return fmt.Errorf("queue: write %s: %w", path, err)
		}
		q.cursorGen = gen
		if sync {
			if err := q.cursorF.Sync(); err != nil {
				return fmt.Errorf("queue: sync %s: %w", path, err)
			}
		}
	}
	if sync {
		q.cursorUnsynced = false
	} else {
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

// openCursorLocked opens the cursor file for updates in place. A file
// that is not there yet is created whole with c in both slots (synced,
// renamed into place; written reports that). Then a cursor.json left by
// an older agent goes.
func (q *Queue) openCursorLocked(path string, c cursor) (written bool, err error) {
	if q.cursorGen == 0 || !fileExists(path) {
		written = true
		q.cursorGen = 1
		var b [slotStride + slotSize]byte
		copy(b[:], encodeSlot(0, c))
		copy(b[slotStride:], encodeSlot(1, c))
		for i := slotSize; i < slotStride; i++ {
			b[i] = ' '
		}
		b[slotStride-1] = '\n'
		if err := atomicfile.WriteFile(path, b[:], 0o600); err != nil {
			return false, fmt.Errorf("queue: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("queue: %w", err)
	}
	q.cursorF = f
	if q.legacyCursor {
		if err := os.Remove(filepath.Join(q.dir, legacyCursorFile)); err == nil || errors.Is(err, os.ErrNotExist) {
			q.legacyCursor = false
		}
	}
	return written, nil
}
