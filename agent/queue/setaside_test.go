package queue

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSetAsideUnblocks: a record set aside is kept in setaside.log,
// counted (also after a reopen and by Inspect), and no longer holds the
// cursor back.
func TestSetAsideUnblocks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"poison", "a", "b"} {
		q.Append([]byte(p))
	}
	q.Ack(2)
	q.Ack(3)
	if s := q.Stats(); s.Acked != 0 || s.Depth != 1 {
		t.Fatalf("before: %+v", s)
	}
	if err := q.SetAside(1, []byte("poison")); err != nil {
		t.Fatal(err)
	}
	if s := q.Stats(); s.Acked != 3 || s.Depth != 0 || s.SetAside != 1 || q.Durable() != 3 {
		t.Fatalf("after: %+v, durable %d", s, q.Durable())
	}
	q.Close()
	b, err := os.ReadFile(filepath.Join(dir, setAsideFile))
	if err != nil {
		t.Fatal(err)
	}
	if rec, _, err := decodeRecord(b); err != nil || rec.Seq != 1 || string(rec.Payload) != "poison" {
		t.Fatalf("setaside.log: %+v %v", rec, err)
	}
	st, err := Inspect(dir)
	if err != nil || st.SetAside != 1 || st.Depth != 0 {
		t.Fatalf("inspect %+v %v", st, err)
	}
	q, err = Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if s := q.Stats(); s.SetAside != 1 || s.Depth != 0 || s.Next != 4 {
		t.Fatalf("reopened: %+v", s)
	}
}

// TestInspectCountsDamage: status reads damage without repairing it.
func TestInspectCountsDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, _ := Open(dir, opts())
	for _, p := range []string{"one", "two", "three"} {
		q.Append([]byte(p))
	}
	q.Close()
	path := filepath.Join(dir, segName(1, 0))
	b, _ := os.ReadFile(path)
	b[headerSize+len("one")+headerSize] ^= 0x40 // the payload of "two"
	os.WriteFile(path, b, 0o600)
	st, err := Inspect(dir)
	if err != nil || st.Corrupt != 1 || st.Depth != 2 {
		t.Fatalf("inspect %+v %v", st, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(b) {
		t.Fatal("Inspect changed the segment")
	}
	os.WriteFile(filepath.Join(dir, cursorFile), newerSlotFile(), 0o600)
	if st, _ := Inspect(dir); st.CursorError == "" {
		t.Fatalf("a newer cursor not reported: %+v", st)
	}
}

// TestDamageKeptBounded: damaged spans set aside for an operator never
// pile up past maxDamageFiles.
func TestDamageKeptBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	seg := filepath.Join(dir, segName(1, 0))
	for i := 0; i < maxDamageFiles+3; i++ {
		if q.keepDamage(seg, damage{off: int64(i)}, []byte("bad")) == "" {
			t.Fatal("span not kept")
		}
	}
	kept, _ := filepath.Glob(seg + ".corrupt-*")
	if len(kept) != maxDamageFiles {
		t.Fatalf("%d damaged spans kept, want %d", len(kept), maxDamageFiles)
	}
	if _, err := os.Stat(seg + ".corrupt-10"); err != nil {
		t.Fatalf("the newest span was removed: %v", err)
	}
}
