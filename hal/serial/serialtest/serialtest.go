// Package serialtest provides real pty pairs standing in for a UART, for
// tests of code that talks over hal/serial.
//
// Pty gives one pair: the code under test opens the tty path with
// serial.Open (the real tarm/serial path), and the test drives the master
// end, which satisfies serial.Port. Link joins two pty pairs with a relay
// in the middle, so that two programs can each open a tty path (a device
// and a jig) while the test watches, corrupts or cuts the bytes between
// them.
package serialtest

import (
	"errors"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/creack/pty"
)

// Pair is one pty: Master is the test's end, TTY the path the code under
// test opens.
type Pair struct {
	Master *os.File
	TTY    string
	// slave keeps the tty open so the master never sees "all slaves
	// closed" (EIO) while the code under test reopens the path.
	slave *os.File
}

// Pty opens a pty pair and closes it when the test ends.
func Pty(t testing.TB) *Pair {
	t.Helper()
	m, s, err := pty.Open()
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	// creack/pty leaves the master in blocking mode (it calls Fd()), where
	// read deadlines do not work and Close waits for a blocked Read.
	if m, err = pollable(m); err != nil {
		t.Fatalf("pty master: %v", err)
	}
	// Raw mode from the start, so nothing is echoed or line-edited before
	// the code under test opens the tty and sets its own termios.
	if err := makeRaw(s); err != nil {
		t.Fatalf("pty raw mode: %v", err)
	}
	p := &Pair{Master: m, TTY: s.Name(), slave: s}
	t.Cleanup(func() { m.Close(); s.Close() })
	return p
}

// Direction says which way bytes flow through a Link.
type Direction int

const (
	// ToDevice is jig -> device.
	ToDevice Direction = iota
	// ToJig is device -> jig.
	ToJig
)

func (d Direction) String() string {
	if d == ToDevice {
		return "jig->device"
	}
	return "device->jig"
}

// Tamper may change, drop (return nil) or replace bytes in flight. total is
// the number of bytes that went that way before this chunk.
type Tamper func(dir Direction, total int, b []byte) []byte

// Link is two pty pairs joined by a relay.
type Link struct {
	DeviceTTY string // the device opens this path
	JigTTY    string // the jig opens this path

	mu     sync.Mutex
	tamper Tamper
	counts [2]int
}

// NewLink makes a Link and stops its relay when the test ends.
func NewLink(t testing.TB) *Link {
	t.Helper()
	dev, jig := Pty(t), Pty(t)
	l := &Link{DeviceTTY: dev.TTY, JigTTY: jig.TTY}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pump(ToDevice, jig.Master, dev.Master) }()
	go func() { defer wg.Done(); l.pump(ToJig, dev.Master, jig.Master) }()
	// Closing the masters (Pty's cleanup, registered earlier, runs later)
	// would be too late for wg.Wait, so close them here first.
	t.Cleanup(func() { dev.Master.Close(); jig.Master.Close(); wg.Wait() })
	return l
}

// SetTamper installs (or, with nil, removes) a tamper function.
func (l *Link) SetTamper(f Tamper) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tamper = f
}

// Bytes returns how many bytes went each way (before tampering).
func (l *Link) Bytes(dir Direction) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[dir]
}

func (l *Link) pump(dir Direction, from, to *os.File) {
	buf := make([]byte, 4096)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			l.mu.Lock()
			total := l.counts[dir]
			l.counts[dir] += n
			f := l.tamper
			l.mu.Unlock()
			b := append([]byte(nil), buf[:n]...)
			if f != nil {
				b = f(dir, total, b)
			}
			if len(b) > 0 {
				if _, err := to.Write(b); err != nil {
					return
				}
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			// EIO while no one has the tty open is not fatal: the slave
			// stays open through Pair.slave, so other errors mean shutdown.
			return
		}
	}
}
