package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/creack/pty"
)

// uartLink is the factory cable: a pty whose far end the jig opens as its
// serial port, joined to QEMU's socket behind the board's 16550. It can be
// cut at a chosen moment in the jig's transfer, as when a cable is pulled.
type uartLink struct {
	ptmx, tty *os.File
	conn      net.Conn
	once      sync.Once
	done      chan struct{}

	mu      sync.Mutex
	fromJig bytes.Buffer // what the jig sent, for the cut trigger
	cutAt   []byte       // cut once the jig has sent this...
	cutN    int          // ...this many times
	cut     chan struct{}
	cutFn   func() // the cut, when it is not dropping this link
	dead    bool   // cut with cutFn: bytes no longer pass
}

func openUART(ctx context.Context, dir string) (*uartLink, error) {
	conn, err := dialUnix(ctx, filepath.Join(dir, "uart.sock"))
	if err != nil {
		return nil, err
	}
	ptmx, tty, err := pty.Open()
	if err != nil {
		conn.Close()
		return nil, err
	}
	l := &uartLink{ptmx: ptmx, tty: tty, conn: conn, done: make(chan struct{}), cut: make(chan struct{})}
	go func() { // board -> jig
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if n > 0 && !l.isDead() {
				_, _ = ptmx.Write(buf[:n])
			}
			if err != nil {
				l.close()
				return
			}
		}
	}()
	go func() { // jig -> board
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 && !l.isDead() {
				_, _ = conn.Write(buf[:n])
				l.watch(buf[:n])
			}
			if err != nil {
				l.close()
				return
			}
		}
	}()
	return l, nil
}

// portPath is the serial device the jig opens.
func (l *uartLink) portPath() string { return l.tty.Name() }

// cutAfter arms the cut: once the jig has sent marker n times, the link
// drops (both directions, mid-stream).
func (l *uartLink) cutAfter(marker string, n int) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cutAt, l.cutN = []byte(marker), n
	return l.cut
}

func (l *uartLink) isDead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead
}

// cutWith makes the armed cut call fn instead of dropping the link (the
// cable is elsewhere).
func (l *uartLink) cutWith(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cutFn = fn
}

func (l *uartLink) watch(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cutAt == nil {
		return
	}
	l.fromJig.Write(b)
	if bytes.Count(l.fromJig.Bytes(), l.cutAt) >= l.cutN {
		l.cutAt = nil
		close(l.cut)
		if l.cutFn != nil {
			// The cable is elsewhere; from here on no byte passes, as
			// from the instant a cable is pulled.
			l.dead = true
			go l.cutFn()
		} else {
			go l.close()
		}
	}
}

func (l *uartLink) close() {
	l.once.Do(func() {
		l.conn.Close()
		l.ptmx.Close()
		l.tty.Close()
		close(l.done)
	})
}
