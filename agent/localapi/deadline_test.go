package localapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"devid/hal/clock/clocktest"
)

// pipeListener hands out in-memory connections (net.Pipe), so that a
// server runs inside a synctest bubble and its deadlines run on the
// bubble's clock.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

func (l *pipeListener) dial() net.Conn {
	server, client := net.Pipe()
	l.conns <- server
	return client
}

// servePipes runs a server on a pipeListener until the bubble's test ends.
func servePipes(t *testing.T, opt Options) (*pipeListener, *fakeBackend) {
	t.Helper()
	ln := newPipeListener()
	be := &fakeBackend{}
	s := newServer(opt, be, ln)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln, be
}

// pipeClient reads reply lines from one pipe connection.
type pipeClient struct {
	c net.Conn
	r *bufio.Reader
}

func (p *pipeClient) send(t *testing.T, line string) {
	t.Helper()
	go p.c.Write([]byte(line)) // a pipe write waits for the reader
}

func (p *pipeClient) readLine() (string, error) {
	return p.r.ReadString('\n')
}

// closed says whether the server has closed the connection (everything
// pending is read first).
func (p *pipeClient) closed() bool {
	for {
		_, err := p.readLine()
		if err != nil {
			return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
		}
	}
}

func pipeDial(ln *pipeListener) *pipeClient {
	c := ln.dial()
	return &pipeClient{c: c, r: bufio.NewReader(c)}
}

// TestIdleClientsCannotLockOut: idle connections that fill every slot
// are closed after IdleTimeout, and a new client is served again.
// Before: no deadline, and the slots were held forever.
func TestIdleClientsCannotLockOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln, _ := servePipes(t, Options{Path: "pipe", MaxClients: 2, MaxClientsPerUID: 2, IdleTimeout: time.Minute})
		a, b := pipeDial(ln), pipeDial(ln)
		synctest.Wait()
		third := pipeDial(ln)
		if l, _ := third.readLine(); !strings.Contains(l, "too many local clients") {
			t.Fatalf("third client while two are open: %q", l)
		}
		clocktest.Step(time.Minute + time.Second)
		if !a.closed() || !b.closed() {
			t.Fatal("idle clients still connected after the idle timeout")
		}
		c := pipeDial(ln)
		c.send(t, `{"op":"status"}`+"\n")
		if l, err := c.readLine(); err != nil || !strings.Contains(l, `"ok":true`) {
			t.Fatalf("new client after the idle ones left: %q %v", l, err)
		}
	})
}

// TestHalfSentRequestTimesOut: a request line that never ends is
// answered with an error after ReadTimeout and the slot is freed, even
// for a subscriber (which is exempt from the idle timeout).
func TestHalfSentRequestTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln, _ := servePipes(t, Options{Path: "pipe", MaxClients: 1, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute})
		c := pipeDial(ln)
		c.send(t, `{"op":"subscribe","c2d":true}`+"\n")
		if l, _ := c.readLine(); !strings.Contains(l, `"ok":true`) {
			t.Fatalf("subscribe: %q", l)
		}
		// A subscriber outlives the idle timeout: it waits for events.
		clocktest.Step(2 * time.Minute)
		c.send(t, `{"op":"sta`)
		clocktest.Step(9 * time.Second)
		// Still within ReadTimeout: the rest of the line is accepted.
		c.send(t, `tus"}`+"\n")
		if l, _ := c.readLine(); !strings.Contains(l, `"ok":true`) {
			t.Fatalf("slow but whole request: %q", l)
		}
		c.send(t, `{"op":"sta`)
		clocktest.Step(11 * time.Second)
		if l, _ := c.readLine(); !strings.Contains(l, "not finished within 10s") {
			t.Fatalf("half-sent request: %q, want a timeout error", l)
		}
		if !c.closed() {
			t.Fatal("half-sent connection still open")
		}
		// The server frees the slot only after it has closed the
		// connection: let that goroutine finish before dialing.
		synctest.Wait()
		d := pipeDial(ln)
		d.send(t, `{"op":"status"}`+"\n")
		if l, err := d.readLine(); err != nil || !strings.Contains(l, `"ok":true`) {
			t.Fatalf("new client after the half-sent one was closed: %q %v", l, err)
		}
	})
}

// TestPerUIDLimit: one user cannot take every slot; the limit comes from
// the kernel's peer credentials of a real Unix socket.
func TestPerUIDLimit(t *testing.T) {
	t.Parallel()
	path := socketPath(t)
	listenServe(t, Options{Path: path, MaxMessage: 1024, MaxClients: 10, MaxClientsPerUID: 2}, &fakeBackend{})
	for range 2 {
		if r := dial(t, path).roundTrip(`{"op":"status"}`); r["ok"] != true {
			t.Fatalf("status: %v", r)
		}
	}
	r := dial(t, path).read()
	want := "too many local clients for uid " + strconv.Itoa(os.Getuid())
	if r["ok"] != false || !strings.HasPrefix(r["error"].(string), want) {
		t.Fatalf("third client of one uid: %v, want %q", r, want)
	}
}
