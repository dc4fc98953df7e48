package queue

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Inspect reads the queue in dir without changing anything (no tail
// truncation, no cursor write), for `devid-agent status` and `check`
// while the daemon may be running.
func Inspect(dir string) (Stats, error) {
	var st Stats
	var c cursor
	if b, err := os.ReadFile(filepath.Join(dir, cursorFile)); err == nil {
		json.Unmarshal(b, &c)
	}
	st.Acked, st.Dropped = c.Acked, c.Dropped
	names, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil {
		return st, err
	}
	sort.Strings(names)
	last := c.Acked
	for _, name := range names {
		if !strings.HasSuffix(name, ".log") {
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		var off int64
		for {
			rec, n, err := readRecordAt(f, off)
			if err == io.EOF || err != nil {
				break
			}
			if rec.Seq > c.Acked {
				st.Depth++
			}
			if rec.Seq > last {
				last = rec.Seq
			}
			off += int64(n)
		}
		f.Close()
		st.Bytes += off
	}
	st.Next = last + 1
	return st, nil
}
