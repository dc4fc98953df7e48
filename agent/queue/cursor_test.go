package queue

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNewerCursorNeverOverwritten: a cursor.json from a newer agent makes
// Open fail with a clear error and leaves the file as it was.
func TestNewerCursorNeverOverwritten(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	q.Append([]byte("m"))
	q.Close()
	newer := []byte(`{"schema":2,"acked":0,"dropped":0,"extents":[1,2]}`)
	path := filepath.Join(dir, cursorFile)
	os.WriteFile(path, newer, 0o600)
	q, err = Open(dir, opts())
	if err == nil {
		q.Close()
		t.Fatal("opened a queue whose cursor has a newer schema")
	}
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not say the cursor at %s is newer", err, path)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, newer) {
		t.Fatalf("newer cursor overwritten: %s", b)
	}
}

// TestCorruptCursorSetAside: a damaged cursor.json is logged with its
// path and cause, renamed to a name that says so, reported in Stats, and
// the queue resends from the oldest segment (never loses a record).
func TestCorruptCursorSetAside(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		q.Append([]byte("m"))
	}
	q.Ack(1)
	q.Ack(2)
	q.Close()
	path := filepath.Join(dir, cursorFile)
	os.WriteFile(path, []byte(`{"schema":1,"acked":`), 0o600)
	var logs bytes.Buffer
	o := opts()
	o.Log = slog.New(slog.NewTextHandler(&logs, nil))
	q, err = Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	st := q.Stats()
	if st.CursorSetAside == "" || !strings.HasPrefix(filepath.Base(st.CursorSetAside), "cursor.json.corrupt-") {
		t.Fatalf("cursor not reported as set aside: %+v", st)
	}
	if _, err := os.Stat(st.CursorSetAside); err != nil {
		t.Fatalf("set-aside cursor: %v", err)
	}
	if !strings.Contains(logs.String(), path) || !strings.Contains(logs.String(), "unexpected end of JSON input") {
		t.Fatalf("log does not name the path and the cause:\n%s", logs.String())
	}
	if recs := drain(t, q); len(recs) != 5 {
		t.Fatalf("after a lost cursor %d records queued, want all 5 (at least once)", len(recs))
	}
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
	c, err := parseCursor(b)
	if err != nil || c.Acked != 12 {
		t.Fatalf("cursor on disk %s (%v), want acked 12", b, err)
	}
}

func FuzzParseCursor(f *testing.F) {
	f.Add([]byte(`{"schema":1,"acked":7,"dropped":2,"corrupt":1,"set_aside":3}`))
	f.Add([]byte(`{"schema":2,"acked":7}`))
	f.Add([]byte(`{"schema":0}`))
	f.Add([]byte(`{"acked":7}`))
	f.Add([]byte(`{"schema":1,"acked":-1}`))
	f.Add([]byte(`{"schema":1,"acked":`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseCursor(b)
		if err != nil {
			if c != (cursor{}) {
				t.Fatalf("error %v with a cursor %+v", err, c)
			}
			return
		}
		if c.Schema != cursorSchema {
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
