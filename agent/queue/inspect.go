package queue

import (
	"os"
	"path/filepath"
)

// Inspect reads the queue in dir without changing anything (no tail
// truncation, no rewrite, no cursor write), for `devid-agent status` and
// `check` while the daemon may be running. Damage it finds is added to
// Corrupt as the next Open would count it.
func Inspect(dir string) (Stats, error) {
	var st Stats
	var c cursor
	if b, err := os.ReadFile(filepath.Join(dir, cursorFile)); err == nil {
		var perr error
		if c, perr = parseCursor(b); perr != nil {
			// Damaged: the next Open sets it aside; newer: Open refuses it.
			st.CursorError = filepath.Join(dir, cursorFile) + ": " + perr.Error()
		}
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, cursorFile+".corrupt-*")); len(aside) > 0 {
		st.CursorSetAside = aside[len(aside)-1] // the names sort by time
	}
	st.Acked, st.Dropped, st.Corrupt, st.SetAside = c.Acked, c.Dropped, c.Corrupt, c.SetAside
	segs, err := listSegments(dir)
	if err != nil {
		return st, err
	}
	last := c.Acked
	var prevLast uint64 // last record of the previous segment
	for i, s := range segs {
		b, err := os.ReadFile(s.path)
		if err != nil {
			continue
		}
		prev := s.first - 1
		if i > 0 {
			prev = max(prev, prevLast)
		}
		sc := scan(b, prev)
		for _, r := range sc.recs {
			if r.Seq > c.Acked {
				st.Depth++
			}
			last = max(last, r.Seq)
			prevLast = r.Seq
		}
		for _, d := range sc.damage {
			st.Corrupt += d.records
		}
		st.Bytes += sc.end
	}
	st.Next = last + 1
	return st, nil
}
