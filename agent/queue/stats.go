package queue

// Stats is a snapshot of the queue's counters.
type Stats struct {
	// Depth is how many records wait for an ack.
	Depth uint64 `json:"depth"`
	// Bytes is the queue's size on disk.
	Bytes int64 `json:"bytes"`
	// Dropped counts records lost to the size bound (drop-oldest).
	Dropped uint64 `json:"dropped"`
	// Corrupt counts damaged records skipped by their checksum.
	Corrupt uint64 `json:"corrupt"`
	// SetAside counts records the hub refused for good (setaside.log).
	SetAside uint64 `json:"set_aside"`
	// Acked is the highest sequence number with everything up to it acked.
	Acked uint64 `json:"acked"`
	// Next is the sequence number the next Append gets.
	Next uint64 `json:"next"`
	// Truncated counts torn tails cut off when the queue was opened.
	Truncated int `json:"truncated,omitempty"`
	// CursorSetAside names where a damaged cursor file was moved.
	CursorSetAside string `json:"cursor_set_aside,omitempty"`
	// CursorError (Inspect only) says why the cursor file cannot be used.
	CursorError string `json:"cursor_error,omitempty"`
	// Memory counts unacknowledged records kept only in memory because
	// the disk refuses writes (DiskError says why): a power cut loses
	// them.
	Memory uint64 `json:"memory,omitempty"`
	// DiskError is why new records are kept in memory ("": they are not).
	DiskError string `json:"disk_error,omitempty"`
}

// Stats returns the current counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	var depth uint64
	for _, s := range q.segs {
		if s.count() > 0 && s.last > q.acked {
			depth += s.last - max64(q.acked, s.first-1)
		}
	}
	depth -= uint64(len(q.pending))
	return Stats{Depth: depth, Bytes: q.bytesLocked(), Dropped: q.dropped, Corrupt: q.corrupt + q.corruptLive, SetAside: q.setAside,
		Acked: q.acked, Next: q.nextSeq, Truncated: q.truncated, CursorSetAside: q.cursorAside,
		Memory: q.memRecordsLocked(), DiskError: q.diskErr}
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
