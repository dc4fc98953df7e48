package dps

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// gateConn is the connection under a batchConn: each Write announces
// itself on entered, waits for the test to open the gate (one send per
// Write), and is recorded.
type gateConn struct {
	net.Conn
	entered chan struct{}
	gate    chan struct{}
	fail    error
	mu      sync.Mutex
	writes  [][]byte
	closed  bool
}

func newGateConn(fail error) *gateConn {
	return &gateConn{entered: make(chan struct{}), gate: make(chan struct{}), fail: fail}
}

// pass lets one Write through, once the flusher is in it.
func (g *gateConn) pass() { <-g.entered; g.gate <- struct{}{} }

func (g *gateConn) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return 0, g.fail
	}
	g.writes = append(g.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (g *gateConn) SetWriteDeadline(time.Time) error { return nil }

func (g *gateConn) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

func (g *gateConn) got() (n int, all []byte, closed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.writes), bytes.Join(g.writes, nil), g.closed
}

// TestBatchConnGathersWrites: packets written while a write is under way
// go out together in one write, in order, and Close sends what is
// pending before it closes.
func TestBatchConnGathersWrites(t *testing.T) {
	t.Parallel()
	g := newGateConn(nil)
	b := newBatchConn(g, nil)
	var want []byte
	write := func(s string) {
		t.Helper()
		if n, err := b.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("write %q: %d %v", s, n, err)
		}
		want = append(want, s...)
	}
	write("first")
	<-g.entered // the flusher holds "first" at the gate
	for i := range 10 {
		write(fmt.Sprintf("packet-%d;", i)) // these wait in the buffer
	}
	g.gate <- struct{}{} // "first" goes
	g.pass()             // the ten go, together
	write("last")
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	g.pass() // "last" goes before the close
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n, all, closed := g.got()
	if !bytes.Equal(all, want) {
		t.Fatalf("bytes out %q, want %q", all, want)
	}
	if n != 3 {
		t.Fatalf("%d writes, want 3 (first, the ten gathered, last)", n)
	}
	if !closed {
		t.Fatal("Close did not close the connection")
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Fatal("a write after Close succeeded")
	}
}

// TestBatchConnWriteError: a failed write closes the connection and
// every later Write returns that error.
func TestBatchConnWriteError(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	g := newGateConn(boom)
	reported := make(chan error, 2)
	b := newBatchConn(g, func(err error) { reported <- err })
	if _, err := b.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	g.pass()
	<-b.stopped
	if _, err := b.Write([]byte("b")); !errors.Is(err, boom) {
		t.Fatalf("write after a failed write: %v, want %v", err, boom)
	}
	if _, _, closed := g.got(); !closed {
		t.Fatal("a failed write did not close the connection")
	}
	if err := <-reported; !errors.Is(err, boom) {
		t.Fatalf("reported %v, want %v", err, boom)
	}
	b.Close()
}

// TestBatchConnBounded: a Write waits while batchLimit bytes are
// pending, until the flusher takes them.
func TestBatchConnBounded(t *testing.T) {
	t.Parallel()
	g := newGateConn(nil)
	b := newBatchConn(g, nil)
	b.Write([]byte("held"))
	<-g.entered // "held" at the gate
	big := make([]byte, batchLimit)
	if _, err := b.Write(big); err != nil { // fills the buffer
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		b.Write([]byte("over"))
		close(wrote)
	}()
	runtime.Gosched()
	b.mu.Lock()
	if len(b.buf) > batchLimit {
		t.Errorf("%d bytes pending: a write past the limit did not wait", len(b.buf))
	}
	b.mu.Unlock()
	g.gate <- struct{}{} // "held" goes; the flusher takes the full buffer
	g.pass()             // the full buffer goes; "over" gets in meanwhile
	<-wrote
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	g.pass() // "over"
	<-closed
	if _, all, _ := g.got(); len(all) != len("held")+batchLimit+len("over") {
		t.Fatalf("%d bytes out", len(all))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		t.Fatal(b.err)
	}
}

// TestBatchConnReportsReadError: the peer closing the connection is
// reported once, from the read that sees it.
func TestBatchConnReportsReadError(t *testing.T) {
	t.Parallel()
	near, far := net.Pipe()
	reported := make(chan error, 2)
	b := newBatchConn(near, func(err error) { reported <- err })
	defer b.Close()
	far.Close()
	buf := make([]byte, 8)
	for range 2 {
		if _, err := b.Read(buf); err == nil {
			t.Fatal("read after the peer closed succeeded")
		}
	}
	if err := <-reported; !errors.Is(err, io.EOF) {
		t.Fatalf("reported %v, want EOF", err)
	}
	select {
	case err := <-reported:
		t.Fatalf("reported twice (%v)", err)
	default:
	}
}
