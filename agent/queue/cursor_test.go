package queue

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// newerSlotFile is a cursor file whose slots a newer agent wrote: schema
// 3, good checksums.
func newerSlotFile() []byte {
	body := cursorMagic + " 3 gen=5 acked=1 dropped=0 corrupt=0 set_aside=0 extents=1,2"
	line := fmt.Sprintf("%s crc=%08x", body, crc32.Checksum([]byte(body), castagnoli))
	b := bytes.Repeat([]byte(" "), slotStride+slotSize)
	copy(b, line)
	copy(b[slotStride:], line)
	return b
}

// TestNewerCursorNeverOverwritten: a cursor from a newer agent (the slot
// file, or a cursor.json of a schema after 1) makes Open fail with a
// clear error and leaves the file as it was.
func TestNewerCursorNeverOverwritten(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		file string
		data []byte
	}{
		"slots":       {cursorFile, newerSlotFile()},
		"cursor.json": {legacyCursorFile, []byte(`{"schema":2,"acked":0,"dropped":0,"extents":[1,2]}`)},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			q, err := Open(dir, opts())
			if err != nil {
				t.Fatal(err)
			}
			q.Append([]byte("m"))
			q.Close()
			path := filepath.Join(dir, c.file)
			os.WriteFile(path, c.data, 0o600)
			q, err = Open(dir, opts())
			if err == nil {
				q.Close()
				t.Fatal("opened a queue whose cursor has a newer schema")
			}
			if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not say the cursor at %s is newer", err, path)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, c.data) {
				t.Fatalf("newer cursor overwritten: %s", b)
			}
			if st, _ := Inspect(dir); !strings.Contains(st.CursorError, "newer schema") {
				t.Fatalf("Inspect does not report the newer cursor: %+v", st)
			}
		})
	}
}

// TestCorruptCursorSetAside: a cursor with no good slot (or a damaged
// cursor.json) is logged with its path and cause, renamed to a name that
// says so, reported in Stats, and the queue resends from the oldest
// segment (never loses a record).
func TestCorruptCursorSetAside(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		file, cause string
		data        []byte
	}{
		"slots":       {cursorFile, "no checksum", bytes.Repeat([]byte("{"), 700)},
		"short":       {cursorFile, "missing (file is 5 bytes)", []byte("devid")},
		"cursor.json": {legacyCursorFile, "unexpected end of JSON input", []byte(`{"schema":1,"acked":`)},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			q := queueWith(t, dir, 5)
			q.Ack(1)
			q.Ack(2)
			q.Close()
			if c.file == legacyCursorFile {
				os.Remove(filepath.Join(dir, cursorFile))
			}
			path := filepath.Join(dir, c.file)
			os.WriteFile(path, c.data, 0o600)
			if st, _ := Inspect(dir); !strings.Contains(st.CursorError, path) || !strings.Contains(st.CursorError, c.cause) {
				t.Fatalf("Inspect: cursor error %q does not name %s and %q", st.CursorError, path, c.cause)
			}
			var logs bytes.Buffer
			o := opts()
			o.Log = slog.New(slog.NewTextHandler(&logs, nil))
			q, err := Open(dir, o)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			st := q.Stats()
			if st.CursorSetAside == "" || !strings.HasPrefix(filepath.Base(st.CursorSetAside), c.file+".corrupt-") {
				t.Fatalf("cursor not reported as set aside: %+v", st)
			}
			if _, err := os.Stat(st.CursorSetAside); err != nil {
				t.Fatalf("set-aside cursor: %v", err)
			}
			if ist, _ := Inspect(dir); ist.CursorSetAside != st.CursorSetAside {
				t.Fatalf("Inspect reports set aside %q, Open %q", ist.CursorSetAside, st.CursorSetAside)
			}
			if !strings.Contains(logs.String(), path) || !strings.Contains(logs.String(), c.cause) {
				t.Fatalf("log does not name the path and the cause:\n%s", logs.String())
			}
			if recs := drain(t, q); len(recs) != 5 {
				t.Fatalf("after a lost cursor %d records queued, want all 5 (at least once)", len(recs))
			}
		})
	}
}

// TestTornSlotKeepsPreviousCursor: a power cut that tears the slot being
// written leaves the other slot, the cursor before it: the queue resends
// from there, sets nothing aside, and the next write mends the torn slot.
func TestTornSlotKeepsPreviousCursor(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := queueWith(t, dir, 6)
	q.Ack(1)
	q.Sync()
	q.Ack(2)
	q.Sync()
	q.Close()
	path := filepath.Join(dir, cursorFile)
	b, _ := os.ReadFile(path)
	gen, c, err := parseCursorFile(b)
	if err != nil || c.Acked != 2 {
		t.Fatalf("cursor before the tear: gen %d %+v %v", gen, c, err)
	}
	// Tear the newer slot mid-line.
	torn := int(gen%2)*slotStride + 30
	b[torn] ^= 0x01
	os.WriteFile(path, b, 0o600)
	q, err = Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	st := q.Stats()
	if st.Acked != 1 || st.CursorSetAside != "" {
		t.Fatalf("after a torn slot: %+v, want acked 1 (the older slot) and nothing set aside", st)
	}
	if recs := drain(t, q); len(recs) != 5 {
		t.Fatalf("%d records queued after the tear, want 5 (2..6)", len(recs))
	}
	q.Ack(2)
	q.Close()
	b, _ = os.ReadFile(path)
	for i := range 2 {
		if _, _, err := parseSlot(b[i*slotStride : i*slotStride+slotSize]); err != nil {
			t.Fatalf("slot %d after the next write: %v", i, err)
		}
	}
}

// TestLegacyCursorCarriedOver: a cursor.json an older agent left is read
// at Open, written into the slot file and removed.
func TestLegacyCursorCarriedOver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := queueWith(t, dir, 5)
	q.Close()
	os.WriteFile(filepath.Join(dir, legacyCursorFile), []byte(`{"schema":1,"acked":3,"dropped":4,"corrupt":0,"set_aside":1}`), 0o600)
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Acked != 3 || st.Dropped != 4 || st.SetAside != 1 {
		t.Fatalf("carried over %+v", st)
	}
	q.Close()
	if _, err := os.Stat(filepath.Join(dir, legacyCursorFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cursor.json still there: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, cursorFile))
	if _, c, err := parseCursorFile(b); err != nil || c.Acked != 3 || c.Dropped != 4 {
		t.Fatalf("slot file %+v %v", c, err)
	}
}

// queueWith opens the queue in dir with n records appended.
func queueWith(t *testing.T, dir string, n int) *Queue {
	t.Helper()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := q.Append([]byte("m")); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

// TestAckCursorDurable: Durable follows Ack onto disk promptly (not only
// every fsync_interval), so a crash resends only what was in flight.
func TestAckCursorDurable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts()) // fsync_interval is an hour here
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := 0; i < 20; i++ {
		q.Append([]byte("m"))
	}
	for seq := uint64(1); seq <= 12; seq++ {
		q.Ack(seq)
	}
	for q.Durable() < 12 {
		<-q.Notify()
	}
	b, _ := os.ReadFile(filepath.Join(dir, cursorFile))
	_, c, err := parseCursorFile(b)
	if err != nil || c.Acked != 12 {
		t.Fatalf("cursor on disk %q (%v), want acked 12", b, err)
	}
}

func FuzzParseCursorFile(f *testing.F) {
	two := func(a, b []byte) []byte {
		out := bytes.Repeat([]byte(" "), slotStride+slotSize)
		copy(out, a)
		copy(out[slotStride:], b)
		return out
	}
	good := encodeSlot(7, cursor{Schema: cursorSchema, Acked: 7, Dropped: 2, Corrupt: 1, SetAside: 3})
	f.Add(two(good, encodeSlot(8, cursor{Acked: 9})))
	f.Add(two(good, []byte("garbage")))
	f.Add(newerSlotFile())
	f.Add(good)
	f.Add([]byte(cursorMagic + " 2 gen=1 acked=-1 dropped=0 corrupt=0 set_aside=0 crc=00000000"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		gen, c, err := parseCursorFile(b)
		if err != nil {
			if c != (cursor{}) || gen != 0 {
				t.Fatalf("error %v with a cursor %+v", err, c)
			}
			return
		}
		if c.Schema != cursorSchema {
			t.Fatalf("accepted schema %d", c.Schema)
		}
		// What parses, encodes back to a slot that parses the same.
		if g, c2, err := parseSlot(encodeSlot(gen, c)); err != nil || g != gen || c2 != c {
			t.Fatalf("round trip of gen %d %+v: gen %d %+v %v", gen, c, g, c2, err)
		}
	})
}

func FuzzParseLegacyCursor(f *testing.F) {
	f.Add([]byte(`{"schema":1,"acked":7,"dropped":2,"corrupt":1,"set_aside":3}`))
	f.Add([]byte(`{"schema":2,"acked":7}`))
	f.Add([]byte(`{"schema":0}`))
	f.Add([]byte(`{"acked":7}`))
	f.Add([]byte(`{"schema":1,"acked":-1}`))
	f.Add([]byte(`{"schema":1,"acked":`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseLegacyCursor(b)
		if err != nil {
			if c != (cursor{}) {
				t.Fatalf("error %v with a cursor %+v", err, c)
			}
			return
		}
		if c.Schema != legacySchema {
			t.Fatalf("accepted schema %d", c.Schema)
		}
	})
}

// TestCursorEvery: with CursorEvery the cursor is written once that many
// acks are not in it, and when everything is acked, without waiting for
// fsync_interval (an hour here); SendLimit follows it.
func TestCursorEvery(t *testing.T) {
	t.Parallel()
	o := opts()
	o.CursorEvery = 8
	q, err := Open(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := 0; i < 10; i++ {
		q.Append([]byte("m"))
	}
	for seq := uint64(1); seq <= 8; seq++ {
		q.Ack(seq)
	}
	for q.Durable() < 8 {
		<-q.Notify()
	}
	if got := q.SendLimit(8); got != 16 {
		t.Fatalf("SendLimit(8) = %d after the cursor reached 8", got)
	}
	// Two acks, fewer than CursorEvery: written because nothing is left.
	for seq := uint64(9); seq <= 10; seq++ {
		q.Ack(seq)
	}
	for q.Durable() < 10 {
		<-q.Notify()
	}
}
