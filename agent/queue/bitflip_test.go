package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestBitFlipAtEveryOffset damages one bit at every byte offset of a
// small segment, both while the queue is closed and under a running
// queue. The damaged record is skipped and counted, and every other
// record, before and after it, is delivered in order; the count survives
// a reopen without being counted twice; the queue keeps working.
func TestBitFlipAtEveryOffset(t *testing.T) {
	t.Parallel()
	const n = 10
	src := t.TempDir()
	q, err := Open(src, opts())
	if err != nil {
		t.Fatal(err)
	}
	var ends []int64 // end offset of each record
	var end int64
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("message-%d", i)
		if _, err := q.Append([]byte(p)); err != nil {
			t.Fatal(err)
		}
		end += int64(headerSize + len(p))
		ends = append(ends, end)
	}
	q.Close()
	seg := filepath.Join(src, segName(1, 0))
	orig, err := os.ReadFile(seg)
	if err != nil || int64(len(orig)) != end {
		t.Fatalf("segment %d bytes, want %d: %v", len(orig), end, err)
	}
	for _, live := range []bool{false, true} {
		for off := range orig {
			name := fmt.Sprintf("live=%v offset %d", live, off)
			damaged := 0 // index of the record holding off
			for int64(off) >= ends[damaged] {
				damaged++
			}
			dir := t.TempDir()
			path := filepath.Join(dir, segName(1, 0))
			flipped := append([]byte(nil), orig...)
			flipped[off] ^= 1 << (off % 8)
			if !live {
				os.WriteFile(path, flipped, 0o600)
			} else {
				os.WriteFile(path, orig, 0o600)
			}
			q, err := Open(dir, opts())
			if err != nil {
				t.Fatalf("%s: open: %v", name, err)
			}
			if live {
				os.WriteFile(path, flipped, 0o600) // in place: same inode
			}
			recs := drain(t, q)
			var want []string
			for i := 0; i < n; i++ {
				if i != damaged {
					want = append(want, fmt.Sprintf("message-%d", i))
				}
			}
			// At open, a last record damaged beyond recognition looks
			// like a torn write: cut and counted as such.
			tail := damaged == n-1 && !live
			got := make([]string, len(recs))
			for i, r := range recs {
				got[i] = string(r.Payload)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%s: got %v, want %v", name, got, want)
			}
			st := q.Stats()
			if st.Corrupt+uint64(st.Truncated) != 1 || (!tail && st.Corrupt != 1) {
				t.Fatalf("%s: damage not counted once: %+v", name, st)
			}
			if kept, _ := filepath.Glob(path + ".corrupt-*"); !live && !tail && len(kept) != 1 {
				t.Fatalf("%s: damaged span not set aside: %v", name, kept)
			}
			if st.Depth != n-1 {
				t.Fatalf("%s: depth %d, want %d", name, st.Depth, n-1)
			}
			for _, r := range recs {
				q.Ack(r.Seq)
			}
			last := uint64(n) // a lost last record's number is used again
			if tail {
				last--
			}
			if s := q.Stats(); s.Depth != 0 || s.Acked != last {
				t.Fatalf("%s: all delivered, but %+v", name, s)
			}
			seq, err := q.Append([]byte("after"))
			if err != nil || seq != last+1 {
				t.Fatalf("%s: append after damage: seq %d, %v", name, seq, err)
			}
			q.Close()
			q, err = Open(dir, opts())
			if err != nil {
				t.Fatalf("%s: reopen: %v", name, err)
			}
			if s := q.Stats(); s.Corrupt > 1 || s.Depth != 1 {
				t.Fatalf("%s: after reopen %+v", name, s)
			}
			q.Close()
		}
	}
	t.Logf("soak: %s: %d offsets flipped, closed and live, every undamaged record kept", t.Name(), len(orig))
}

// FuzzScan: whatever a segment holds, the scan returns only records that
// decode, in increasing order, and spans that stay inside the bytes.
func FuzzScan(f *testing.F) {
	good := append(encodeRecord(1, []byte("a")), encodeRecord(2, []byte("b"))...)
	f.Add(good, uint64(0))
	f.Add(append([]byte("junk"), good...), uint64(0))
	f.Add(append(encodeRecord(3, []byte("c")), good...), uint64(0))
	f.Add(good[:len(good)-1], uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, prev uint64) {
		sc := scan(b, prev)
		if sc.end < 0 || sc.end > int64(len(b)) {
			t.Fatalf("end %d of %d bytes", sc.end, len(b))
		}
		for _, r := range sc.recs {
			if r.Seq <= prev {
				t.Fatalf("record %d not after %d", r.Seq, prev)
			}
			prev = r.Seq
		}
		for _, d := range sc.damage {
			if d.off < 0 || d.end > int64(len(b)) || d.off >= d.end || d.records == 0 {
				t.Fatalf("damage %+v in %d bytes", d, len(b))
			}
		}
	})
}
