package factory

import (
	"context"
	"errors"
	"time"

	"devid/hal/serial"
)

// LineReader outcomes other than a line.
var (
	// ErrLineTooLong: a line longer than MaxLine ended; its bytes were dropped.
	ErrLineTooLong = errors.New("line too long")
	// ErrPartialLine: half a line, then silence for the idle gap; it was dropped.
	ErrPartialLine = errors.New("partial line timed out")
	// ErrDeadline: no complete line before the caller's deadline.
	ErrDeadline = errors.New("no reply before deadline")
)

// LineReader splits the byte stream into lines. Both CR and LF end a
// line, so a terminal's Enter works; empty lines are skipped. It never
// holds more than MaxLine bytes of one line. Both sides of the bus read
// through it: the device (Device.Serve) and the jig (enroll/station/jig).
// It is not safe for concurrent use.
type LineReader struct {
	port    serial.Port
	buf     [512]byte
	pending []byte // read from the port, not yet scanned
	line    []byte
	over    bool // inside an over-long line: drop until its terminator
	last    time.Time
}

// NewLineReader returns a LineReader on p.
func NewLineReader(p serial.Port) *LineReader { return &LineReader{port: p} }

// Next returns the next line. deadline (zero: none) bounds the whole call;
// idle bounds the silence inside a started line (zero: no bound).
func (r *LineReader) Next(ctx context.Context, deadline time.Time, idle time.Duration) ([]byte, error) {
	for {
		for len(r.pending) > 0 {
			c := r.pending[0]
			r.pending = r.pending[1:]
			switch {
			case c == '\n' || c == '\r':
				if r.over {
					r.over, r.line = false, r.line[:0]
					return nil, ErrLineTooLong
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
				return nil, ErrPartialLine
			}
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return nil, ErrDeadline
			}
			continue
		}
		if err == nil {
			continue
		}
		return nil, err
	}
}

// Reset drops any partial line and unread bytes (the jig does this before
// sending a request, so stale replies cannot be mistaken for new ones).
func (r *LineReader) Reset() {
	r.pending, r.line, r.over = nil, r.line[:0], false
}
