package serial_test

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/creack/pty"

	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// waitDone fails the test if done is not closed within a generous bound:
// the point is "returns at all", not how fast.
func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return", what)
	}
}

func TestTarmOverPty(t *testing.T) {
	t.Parallel()
	pair := serialtest.Pty(t)
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	if _, err := pair.Master.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(p, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if _, err := p.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(pair.Master, buf[:4]); err != nil || string(buf[:4]) != "back" {
		t.Fatalf("peer read %q, %v", buf[:4], err)
	}

	// An idle line is a timeout, never io.EOF (tarm's idle (0, io.EOF)).
	p.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	if n, err := p.Read(buf); n != 0 || !serial.IsTimeout(err) {
		t.Fatalf("idle read = %d, %v; want a deadline error", n, err)
	}
	p.SetReadDeadline(time.Time{})

	// ReadContext returns when ctx is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var rerr error
	go func() { _, rerr = serial.ReadContext(ctx, p, buf, time.Time{}); close(done) }()
	cancel()
	waitDone(t, done, "ReadContext after cancel")
	if !errors.Is(rerr, context.Canceled) {
		t.Fatalf("ReadContext err = %v, want context.Canceled", rerr)
	}
}

func TestCloseDuringReadReturns(t *testing.T) {
	t.Parallel()
	pair := serialtest.Pty(t)
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	started, done := make(chan struct{}), make(chan struct{})
	var rerr error
	go func() {
		close(started)
		_, rerr = p.Read(make([]byte, 8))
		close(done)
	}()
	<-started
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	waitDone(t, closed, "Close during Read")
	waitDone(t, done, "Read after Close")
	if !errors.Is(rerr, serial.ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", rerr)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestHangup: a line whose other end goes away (a pty's master closed,
// as a USB adapter unplugged) fails the read at once with ErrHangup,
// instead of spinning until the deadline.
func TestHangup(t *testing.T) {
	t.Parallel()
	m, s, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := serial.Open(s.Name(), 115200)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := m.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	if n, err := p.Read(b); n != 1 || err != nil {
		t.Fatalf("read before the hangup: %d %v", n, err)
	}
	m.Close()
	// The deadline only bounds a broken implementation; the hangup must
	// be the answer.
	_ = p.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := p.Read(b); !errors.Is(err, serial.ErrHangup) {
		t.Fatalf("read after the hangup: %v, want ErrHangup", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	if _, err := serial.Open("/nonexistent/tty", 115200); err == nil {
		t.Fatal("open of a missing device succeeded")
	}
	pair := serialtest.Pty(t)
	if _, err := serial.Open(pair.TTY, 12345); err == nil {
		t.Fatal("unsupported baud rate accepted")
	}
}

// The pty master (the test's peer end) must satisfy Port too.
var _ serial.Port = (*os.File)(nil)
