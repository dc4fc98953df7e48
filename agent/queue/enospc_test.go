package queue

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"devid/hal/hosttest"
)

// smallTmpfs mounts a tmpfs of size bytes in a temp dir, so the test can
// fill a real file system to ENOSPC.
func smallTmpfs(t *testing.T, size int) string { return hosttest.Tmpfs(t, size) }

// fillLeaving fills the file system of dir until only free bytes (rounded
// to pages by tmpfs) remain, with one file it returns.
func fillLeaving(t *testing.T, dir string, free int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	var size int64
	for {
		n, err := f.Write(chunk)
		size += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	if err := f.Truncate(max(0, size-free)); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestENOSPCAtEveryWrite fills a small tmpfs so that "no space left"
// strikes at every byte offset of the record stream, and at segment and
// cursor writes. Every Append that returned a sequence number must be
// read back exactly once, in order, before and after a reopen; a failed
// Append must leave nothing behind that wedges the reader; and once the
// disk has room again the queue works.
func TestENOSPCAtEveryWrite(t *testing.T) {
	mnt := smallTmpfs(t, 256<<10)
	// Segments span pages, so a record can be torn at a page boundary.
	opt := Options{MaxBytes: 48 << 10, SegmentBytes: 12 << 10, Fsync: FsyncAlways, FsyncInterval: 10 * time.Millisecond}
	const payload = 100 // a record of headerSize+payload bytes
	offsets := 0
	for free := int64(0); free <= 2*4096; free += 4096 {
		for pad := 0; pad < headerSize+payload; pad++ {
			name := fmt.Sprintf("free%d-pad%d", free, pad)
			dir := filepath.Join(mnt, name)
			q, err := Open(dir, opt)
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			t.Cleanup(func() { q.Close() })
			accepted := map[uint64]string{}
			if seq, err := q.Append(make([]byte, pad)); err == nil {
				accepted[seq] = string(make([]byte, pad))
			}
			filler := fillLeaving(t, mnt, free)
			// Append until the disk is full, then a few more.
			failures := 0
			for i := 0; failures < 3 && i < 1000; i++ {
				p := fmt.Sprintf("%s-%04d-%0*d", name, i, payload-len(name)-6, 0)
				seq, err := q.Append([]byte(p))
				if err != nil {
					failures++
					continue
				}
				accepted[seq] = p
			}
			if failures == 0 {
				t.Fatalf("%s: the disk never filled", name)
			}
			checkQueue(t, name+" full", q, accepted)
			// A PUBACK while the disk is full: the cursor may not be
			// written, the record is delivered all the same.
			ackOldest(q, accepted, 1)
			checkQueue(t, name+" acked while full", q, accepted)
			os.Remove(filler)
			mustAppend(t, q, name+" room again", accepted)
			checkQueue(t, name+" room again", q, accepted)
			// Deliver all but the newest: acks remove whole segments.
			ackOldest(q, accepted, len(accepted)-3)
			mustAppend(t, q, name+" acked", accepted)
			checkQueue(t, name+" acked", q, accepted)
			// The cursor reaches the disk once there is room.
			for q.Durable() < q.Stats().Acked {
				<-q.Notify()
			}
			if err := q.Close(); err != nil {
				t.Fatalf("%s: close: %v", name, err)
			}
			q, err = Open(dir, opt)
			if err != nil {
				t.Fatalf("%s: reopen: %v", name, err)
			}
			checkQueue(t, name+" reopened", q, accepted)
			if s := q.Stats(); s.Dropped != 0 {
				t.Fatalf("%s: dropped %d", name, s.Dropped)
			}
			q.Close()
			os.RemoveAll(dir)
			offsets++
		}
	}
	// The "soak:" line goes into make soak's report (scripts/soak.sh).
	t.Logf("soak: %s: %d fill points (3 free-space levels x %d byte offsets in a record), 0 accepted records lost", t.Name(), offsets, headerSize+payload)
}

// mustAppend appends 5 records, which must succeed, and notes them.
func mustAppend(t *testing.T, q *Queue, what string, accepted map[uint64]string) {
	t.Helper()
	for i := 0; i < 5; i++ {
		p := fmt.Sprintf("%s %d", what, i)
		seq, err := q.Append([]byte(p))
		if err != nil {
			t.Fatalf("%s: append: %v", what, err)
		}
		accepted[seq] = p
	}
}

// ackOldest acks the n oldest accepted records and forgets them.
func ackOldest(q *Queue, accepted map[uint64]string, n int) {
	seqs := make([]uint64, 0, len(accepted))
	for seq := range accepted {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	for _, seq := range seqs[:n] {
		q.Ack(seq)
		delete(accepted, seq)
	}
}

// checkQueue drains q and checks it holds exactly the accepted records.
func checkQueue(t *testing.T, what string, q *Queue, accepted map[uint64]string) {
	t.Helper()
	var after uint64
	got := 0
	for {
		recs, err := q.Next(after, 64, 1<<20)
		if err != nil {
			t.Fatalf("%s: next after %d: %v", what, after, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			want, ok := accepted[r.Seq]
			if !ok {
				t.Fatalf("%s: record %d was never accepted", what, r.Seq)
			}
			if string(r.Payload) != want {
				t.Fatalf("%s: record %d holds %q, want %q", what, r.Seq, r.Payload, want)
			}
			got++
			after = r.Seq
		}
	}
	if got != len(accepted) {
		t.Fatalf("%s: read %d records, %d were accepted", what, got, len(accepted))
	}
	if d := q.Stats().Depth; d != uint64(len(accepted)) {
		t.Fatalf("%s: depth %d, %d accepted; stats %+v, pending %v", what, d, len(accepted), q.Stats(), q.pending)
	}
}

// TestDamageOnFullDisk: a damaged segment that cannot be rewritten (no
// room) does not stop Open; the damage is skipped in place and counted
// once, and rewritten away once there is room.
func TestDamageOnFullDisk(t *testing.T) {
	mnt := smallTmpfs(t, 64<<10)
	dir := filepath.Join(mnt, "q")
	q, err := Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		q.Append([]byte(fmt.Sprintf("message-%d", i)))
	}
	q.Close()
	path := filepath.Join(dir, segName(1, 0))
	b, _ := os.ReadFile(path)
	b[3*(headerSize+len("message-0"))+headerSize] ^= 1 // the payload of message-3
	os.WriteFile(path, b, 0o600)
	filler := fillLeaving(t, mnt, 0)
	q, err = Open(dir, opts())
	if err != nil {
		t.Fatalf("open with a damaged segment on a full disk: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	if recs := drain(t, q); len(recs) != 9 {
		t.Fatalf("%d records, want 9", len(recs))
	}
	if s := q.Stats(); s.Corrupt != 1 || s.Depth != 9 {
		t.Fatalf("full disk: %+v", s)
	}
	q.Close()
	os.Remove(filler)
	q, err = Open(dir, opts())
	if err != nil {
		t.Fatal(err)
	}
	if s := q.Stats(); s.Corrupt != 1 || s.Depth != 9 {
		t.Fatalf("room again: %+v", s)
	}
	q.Close()
	if after, _ := os.ReadFile(path); len(after) != len(b)-headerSize-len("message-3") {
		t.Fatalf("segment not rewritten: %d bytes", len(after))
	}
}
