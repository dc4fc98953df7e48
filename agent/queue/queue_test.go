package queue

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

func opts() Options {
	return Options{MaxBytes: 8 << 10, SegmentBytes: 2 << 10, Fsync: FsyncAlways, FsyncInterval: time.Hour}
}

func drain(t *testing.T, q *Queue) []Record {
	t.Helper()
	var all []Record
	var after uint64
	for {
		recs, err := q.Next(after, 7, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].Seq
	}
}

func TestAppendAckReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := q.Append([]byte(fmt.Sprintf("msg-%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	recs := drain(t, q)
	if len(recs) != 50 || string(recs[0].Payload) != "msg-000" || string(recs[49].Payload) != "msg-049" {
		t.Fatalf("got %d records", len(recs))
	}
	// Ack out of order: 1..20 except 5, then 5.
	for i := 1; i <= 20; i++ {
		if i != 5 {
			q.Ack(uint64(i))
		}
	}
	if s := q.Stats(); s.Acked != 4 || s.Depth != 31 {
		t.Fatalf("stats %+v", s)
	}
	q.Ack(5)
	if s := q.Stats(); s.Acked != 20 || s.Depth != 30 {
		t.Fatalf("stats %+v", s)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, err = Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	recs = drain(t, q)
	if len(recs) != 30 || recs[0].Seq != 21 || string(recs[0].Payload) != "msg-020" {
		t.Fatalf("after reopen: %d records, first %+v", len(recs), recs[0])
	}
	seq, _ := q.Append([]byte("new"))
	if seq != 51 {
		t.Fatalf("sequence restarted: %d", seq)
	}
}

func TestDropOldestWhenFull(t *testing.T) {
	t.Parallel()
	q, err := Open(t.TempDir(), opts())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	payload := bytes.Repeat([]byte("x"), 200)
	const n = 200
	for i := 0; i < n; i++ {
		if _, err := q.Append(payload); err != nil {
			t.Fatal(err)
		}
	}
	s := q.Stats()
	if s.Bytes > opts().MaxBytes {
		t.Fatalf("queue %d bytes over bound %d", s.Bytes, opts().MaxBytes)
	}
	if s.Dropped == 0 || s.Dropped+s.Depth != n {
		t.Fatalf("dropped %d + depth %d != %d", s.Dropped, s.Depth, n)
	}
	recs := drain(t, q)
	if uint64(len(recs)) != s.Depth || recs[len(recs)-1].Seq != n {
		t.Fatalf("drained %d, depth %d", len(recs), s.Depth)
	}
}

func TestAllAckedSegmentsRemovedAndSeqSurvives(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, _ := Open(dir, opts())
	for i := 0; i < 40; i++ {
		q.Append(bytes.Repeat([]byte("y"), 100))
	}
	for _, r := range drain(t, q) {
		q.Ack(r.Seq)
	}
	q.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if len(segs) != 1 {
		t.Fatalf("acked segments not removed: %v", segs)
	}
	q, _ = Open(dir, opts())
	defer q.Close()
	if s := q.Stats(); s.Depth != 0 || s.Next != 41 {
		t.Fatalf("after reopen %+v", s)
	}
}

func TestTornTailIsCut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, _ := Open(dir, opts())
	for i := 0; i < 3; i++ {
		q.Append([]byte(fmt.Sprintf("m%d", i)))
	}
	q.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	sort.Strings(segs)
	last := segs[len(segs)-1]
	// Simulate a power cut in the middle of a fourth record.
	torn := encodeRecord(4, []byte("half-written"))[:15]
	f, _ := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(torn)
	f.Close()
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	recs := drain(t, q)
	if len(recs) != 3 || q.Stats().Truncated != 1 {
		t.Fatalf("got %d records, stats %+v", len(recs), q.Stats())
	}
	if seq, _ := q.Append([]byte("m3")); seq != 4 {
		t.Fatalf("next seq %d", seq)
	}
	if recs := drain(t, q); len(recs) != 4 || string(recs[3].Payload) != "m3" {
		t.Fatalf("after torn tail: %d records", len(recs))
	}
}

func TestTooLarge(t *testing.T) {
	t.Parallel()
	q, _ := Open(t.TempDir(), opts())
	defer q.Close()
	if _, err := q.Append(make([]byte, 4<<10)); err == nil {
		t.Fatal("oversized payload accepted")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(1, []byte("hello")))
	f.Add(encodeRecord(1<<40, nil))
	f.Add([]byte{})
	bad := encodeRecord(7, []byte("flip"))
	bad[len(bad)-1] ^= 1
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, n, err := decodeRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || n != headerSize+len(rec.Payload) {
			t.Fatalf("n=%d len=%d", n, len(b))
		}
		if !bytes.Equal(encodeRecord(rec.Seq, rec.Payload), b[:n]) {
			t.Fatal("decoded record does not re-encode to the same bytes")
		}
	})
}

// FuzzOpenSegment: whatever bytes a segment holds after a crash, Open
// recovers (cutting the bad tail) and the queue works afterwards.
func FuzzOpenSegment(f *testing.F) {
	good := append(encodeRecord(1, []byte("a")), encodeRecord(2, []byte("b"))...)
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(append(encodeRecord(1, []byte("a")), encodeRecord(5, []byte("gap"))...))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "seg-00000000000000000001.log"), seg, 0o600)
		q, err := Open(dir, opts())
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer q.Close()
		before := q.Stats()
		seq, err := q.Append([]byte("after"))
		if err != nil || seq != before.Next {
			t.Fatalf("append after recovery: seq %d (want %d), %v", seq, before.Next, err)
		}
		recs := drain(t, q)
		if len(recs) == 0 || string(recs[len(recs)-1].Payload) != "after" {
			t.Fatalf("records after recovery: %d", len(recs))
		}
	})
}
