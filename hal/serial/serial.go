// Package serial is the factory UART seam.
//
// Port is the small interface the factory protocol needs: an
// io.ReadWriteCloser whose reads can be bounded by a deadline. Open returns
// one over github.com/tarm/serial; an *os.File for a pty master (as
// github.com/creack/pty returns) satisfies Port directly, which is what
// tests use for the peer end.
//
// tarm/serial has two traps that Open hides: with ReadTimeout == 0 a Read
// blocks forever and Close blocks until a byte arrives; with ReadTimeout > 0
// an idle Read returns (0, io.EOF), which means "nothing yet", not "closed".
// Open always sets a short ReadTimeout and turns idle reads into polling, so
// a Read honours its deadline and Close returns within one poll interval.
package serial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/tarm/serial"
)

// Port is a serial line whose reads can be bounded.
type Port interface {
	io.ReadWriteCloser
	// SetReadDeadline makes Reads that are blocked or start after t fail with
	// an error wrapping os.ErrDeadlineExceeded. A zero t means no deadline.
	// Setting a deadline in the past wakes a blocked Read.
	SetReadDeadline(t time.Time) error
}

// pollInterval is tarm's ReadTimeout: how long one idle read waits in the
// kernel. 100 ms is termios' resolution (VTIME is in deciseconds).
const pollInterval = 100 * time.Millisecond

// ErrClosed is returned by reads and writes on a closed port.
var ErrClosed = errors.New("serial port closed")

// ErrHangup is returned by reads on a line the kernel hung up: the USB
// adapter or gadget behind it was disconnected (or a pty's other end
// closed). The open file stays dead even if the device comes back; open
// the path again.
var ErrHangup = errors.New("serial line hung up (device disconnected)")

// hangupReads is how many empty reads in a row, each returning well
// before the poll interval, mean a hung-up line: an idle read waits the
// whole interval, a hung-up tty returns at once, forever (pyserial reads
// "readable but no data" the same way).
const hangupReads = 3

// TarmPort is a Port over github.com/tarm/serial.
type TarmPort struct {
	name string
	p    *serial.Port

	mu       sync.Mutex
	deadline time.Time
	closed   bool
}

var _ Port = (*TarmPort)(nil)

// Open opens the serial device at path at the given baud rate, 8N1, raw.
func Open(path string, baud int) (*TarmPort, error) {
	if baud <= 0 {
		return nil, fmt.Errorf("open serial %s: baud rate %d must be positive", path, baud)
	}
	p, err := serial.OpenPort(&serial.Config{Name: path, Baud: baud, ReadTimeout: pollInterval})
	if err != nil {
		return nil, fmt.Errorf("open serial %s at %d baud: %w", path, baud, err)
	}
	return &TarmPort{name: path, p: p}, nil
}

// Name is the device path the port was opened with.
func (t *TarmPort) Name() string { return t.name }

// Read reads at least one byte, or fails when the deadline passes or the
// port is closed. Idle polls (tarm's (0, io.EOF)) are not reported.
func (t *TarmPort) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	fast := 0
	for {
		t.mu.Lock()
		closed, dl := t.closed, t.deadline
		t.mu.Unlock()
		if closed {
			return 0, ErrClosed
		}
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, fmt.Errorf("read %s: %w", t.name, os.ErrDeadlineExceeded)
		}
		start := time.Now()
		n, err := t.p.Read(b)
		if n > 0 {
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			if t.isClosed() {
				return 0, ErrClosed
			}
			return 0, err // an *os.PathError, which names the device
		}
		// (0, io.EOF) or (0, nil): the poll interval passed with no data,
		// or the line is hung up and every read returns at once.
		if time.Since(start) < pollInterval/10 {
			if fast++; fast >= hangupReads {
				return 0, fmt.Errorf("read %s: %w", t.name, ErrHangup)
			}
		} else {
			fast = 0
		}
	}
}

// Write writes all of b.
func (t *TarmPort) Write(b []byte) (int, error) {
	if t.isClosed() {
		return 0, ErrClosed
	}
	return t.p.Write(b)
}

// SetReadDeadline implements Port. A blocked Read notices within one poll
// interval.
func (t *TarmPort) SetReadDeadline(d time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deadline = d
	return nil
}

// Flush discards data received but not read and data written but not sent.
func (t *TarmPort) Flush() error { return t.p.Flush() }

// Close closes the port. It returns within one poll interval even while a
// Read is in progress, and closing twice is not an error.
func (t *TarmPort) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	return t.p.Close()
}

func (t *TarmPort) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// ReadContext reads into b like p.Read, but also returns when ctx is done
// or the deadline passes (zero deadline: none). It leaves the port's read
// deadline cleared.
func ReadContext(ctx context.Context, p Port, b []byte, deadline time.Time) (int, error) {
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := p.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	// A past deadline wakes the blocked Read when ctx is cancelled.
	stop := context.AfterFunc(ctx, func() { _ = p.SetReadDeadline(time.Unix(1, 0)) })
	n, err := p.Read(b)
	if !stop() && n == 0 {
		err = ctx.Err()
	}
	_ = p.SetReadDeadline(time.Time{})
	return n, err
}

// IsTimeout reports whether err is a read deadline expiring.
func IsTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
