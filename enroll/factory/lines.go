package factory

import (
	"context"
	"errors"
	"time"

	"devid/hal/serial"
)

// Line-reader outcomes other than a line.
var (
	// errLineTooLong: a line longer than MaxLine ended; its bytes were dropped.
	errLineTooLong = errors.New("line too long")
	// errPartial: half a line, then silence for the idle gap; it was dropped.
	errPartial = errors.New("partial line timed out")
	// errDeadline: no complete line before the caller's deadline.
	errDeadline = errors.New("no reply before deadline")
)

// lineReader splits the byte stream into lines. Both CR and LF end a
// line, so a terminal's Enter works; empty lines are skipped. It never
// holds more than MaxLine bytes of one line.
type lineReader struct {
	port    serial.Port
	buf     [512]byte
	pending []byte // read from the port, not yet scanned
	line    []byte
	over    bool // inside an over-long line: drop until its terminator
	last    time.Time
}

func newLineReader(p serial.Port) *lineReader { return &lineReader{port: p} }

// next returns the next line. deadline (zero: none) bounds the whole call;
// idle bounds the silence inside a started line (zero: no bound).
func (r *lineReader) next(ctx context.Context, deadline time.Time, idle time.Duration) ([]byte, error) {
	for {
		for len(r.pending) > 0 {
			c := r.pending[0]
			r.pending = r.pending[1:]
			switch {
			case c == '\n' || c == '\r':
				if r.over {
					r.over, r.line = false, r.line[:0]
					return nil, errLineTooLong
				}
				if len(r.line) > 0 {
					l := append([]byte(nil), r.line...)
					r.line = r.line[:0]
					return l, nil
				}
			case r.over:
			case len(r.line) >= MaxLine:
				r.over, r.line = true, r.line[:0]
			default:
				r.line = append(r.line, c)
			}
		}
		started := len(r.line) > 0 || r.over
		dl := deadline
		if started && idle > 0 {
			if gap := r.last.Add(idle); dl.IsZero() || gap.Before(dl) {
				dl = gap
			}
		}
		n, err := serial.ReadContext(ctx, r.port, r.buf[:], dl)
		if n > 0 {
			r.last = time.Now()
			r.pending = r.buf[:n]
			continue
		}
		if serial.IsTimeout(err) {
			if started && idle > 0 && !time.Now().Before(r.last.Add(idle)) {
				r.over, r.line = false, r.line[:0]
				return nil, errPartial
			}
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return nil, errDeadline
			}
			continue
		}
		if err == nil {
			continue
		}
		return nil, err
	}
}

// reset drops any partial line and unread bytes (the jig does this before
// sending a request, so stale replies cannot be mistaken for new ones).
func (r *lineReader) reset() {
	r.pending, r.line, r.over = nil, r.line[:0], false
}
