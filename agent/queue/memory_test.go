package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/hal/hosttest"
)

func remount(t *testing.T, dir, mode string) { hosttest.Remount(t, dir, mode) }

// TestReadOnlyDiskKeepsMessagesInMemory: on a disk remounted read-only
// (what ext4 does after errors), with a torn record on it, the queue
// opens, delivers what the disk holds, keeps new records in memory up to
// MemoryBytes and says so in Stats; once the disk is writable again the
// memory records reach it, and a reopen finds every unacknowledged
// record, in order. Before: Open failed (the torn tail could not be cut)
// and the agent could not start.
func TestReadOnlyDiskKeepsMessagesInMemory(t *testing.T) {
	mnt := smallTmpfs(t, 1<<20)
	dir := filepath.Join(mnt, "queue")
	opt := Options{MaxBytes: 64 << 10, SegmentBytes: 8 << 10, Fsync: FsyncAlways, FsyncInterval: time.Hour, MemoryBytes: 2 << 10}
	q, err := Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	accepted := map[uint64]string{}
	for i := range 5 {
		p := fmt.Sprintf("disk-%d", i)
		seq, err := q.Append([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		accepted[seq] = p
	}
	ackOldest(q, accepted, 2)
	q.Close()
	// A torn record at the end, as a power cut leaves it.
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	f, _ := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	f.Write(encodeRecord(99, []byte("torn"))[:10])
	f.Close()

	remount(t, mnt, "ro")
	q, err = Open(dir, opt)
	if err != nil {
		t.Fatalf("open on a read-only disk: %v", err)
	}
	defer func() { q.Close() }()
	checkQueue(t, "read-only", q, accepted)
	// New records go to memory, up to the bound.
	var refused error
	for i := 0; refused == nil; i++ {
		p := fmt.Sprintf("mem-%04d-%s", i, strings.Repeat("x", 50))
		seq, err := q.Append([]byte(p))
		if err != nil {
			refused = err
			break
		}
		accepted[seq] = p
	}
	if !strings.Contains(refused.Error(), "read-only file system") || !strings.Contains(refused.Error(), "kept in memory meanwhile are full") {
		t.Errorf("append past the memory bound: %v, want the disk's error and the bound", refused)
	}
	st := q.Stats()
	inMem := uint64(len(accepted)) - 3
	if st.Memory != inMem || !strings.Contains(st.DiskError, "read-only file system") {
		t.Errorf("stats on a read-only disk: %+v, want memory %d and the disk error", st, inMem)
	}
	checkQueue(t, "read-only, memory tail", q, accepted)
	// Deliveries free memory: acked records leave it, new ones fit.
	ackOldest(q, accepted, 6)
	p := "after-acks"
	seq, err := q.Append([]byte(p))
	if err != nil {
		t.Fatalf("append after acks freed memory: %v", err)
	}
	accepted[seq] = p

	remount(t, mnt, "rw")
	p = "disk-again"
	if seq, err = q.Append([]byte(p)); err != nil {
		t.Fatal(err)
	}
	accepted[seq] = p
	if st := q.Stats(); st.Memory != 0 || st.DiskError != "" {
		t.Errorf("stats after the disk came back: %+v, want nothing in memory", st)
	}
	checkQueue(t, "disk back", q, accepted)
	q.Close()
	q, err = Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	checkQueue(t, "reopened", q, accepted)
}

// TestNoQueueDirOnReadOnlyDisk: a fresh device whose state directory is
// read-only still queues in memory, and writes it all out once it can.
func TestNoQueueDirOnReadOnlyDisk(t *testing.T) {
	mnt := smallTmpfs(t, 1<<20)
	dir := filepath.Join(mnt, "queue")
	opt := Options{MaxBytes: 64 << 10, SegmentBytes: 8 << 10, Fsync: FsyncBatch, FsyncInterval: time.Hour, MemoryBytes: 4 << 10}
	remount(t, mnt, "ro")
	if _, err := Open(dir, Options{MaxBytes: opt.MaxBytes, SegmentBytes: opt.SegmentBytes}); err == nil {
		t.Fatal("Open without MemoryBytes succeeded on a read-only disk")
	}
	q, err := Open(dir, opt)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() { q.Close() }()
	accepted := map[uint64]string{}
	for i := range 10 {
		p := fmt.Sprintf("m%d", i)
		seq, err := q.Append([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		accepted[seq] = p
	}
	if st := q.Stats(); st.Memory != 10 || st.DiskError == "" {
		t.Errorf("stats: %+v", st)
	}
	checkQueue(t, "memory only", q, accepted)
	ackOldest(q, accepted, 3)
	remount(t, mnt, "rw")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if q, err = Open(dir, opt); err != nil {
		t.Fatal(err)
	}
	checkQueue(t, "written out at close", q, accepted)
}
