package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// inspectCursor reads the cursor as Open would (readCursor). An error
// names the file.
func inspectCursor(dir string) (cursor, error) {
	st, err := readCursor(dir)
	if err == nil {
		err = st.bad
	}
	if err != nil {
		return cursor{}, fmt.Errorf("%s: %w", st.path, err)
	}
	return st.c, nil
}

// asideTime is the UTC time in a set-aside cursor's name, which sorts as
// text ("" for none).
func asideTime(path string) string {
	_, t, _ := strings.Cut(filepath.Base(path), ".corrupt-")
	return t
}

// Inspect reads the queue in dir without changing anything (no tail
// truncation, no rewrite, no cursor write), for `devid-agent status` and
// `check` while the daemon may be running. Damage it finds is added to
// Corrupt as the next Open would count it.
func Inspect(dir string) (Stats, error) {
	var st Stats
	c, cerr := inspectCursor(dir)
	if cerr != nil {
		// Damaged: the next Open sets it aside; newer: Open refuses it.
		st.CursorError = cerr.Error()
	}
	// The names sort by time within each pattern.
	var newest string
	for _, name := range []string{cursorFile, legacyCursorFile} {
		aside, _ := filepath.Glob(filepath.Join(dir, name+".corrupt-*"))
		if len(aside) > 0 && asideTime(aside[len(aside)-1]) > asideTime(newest) {
			newest = aside[len(aside)-1]
		}
	}
	st.CursorSetAside = newest
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
