package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Default device paths, tried in this order when the address is empty or
// "auto". The resource manager (tpmrm0) comes first: it lets several
// processes share the TPM and virtualises transient handles per open file.
var DevicePaths = []string{"/dev/tpmrm0", "/dev/tpm0"}

// maxResponse bounds a TPM response. TPM_PT_MAX_RESPONSE_SIZE is 4096 on
// every part we know of; anything larger is a framing error.
const maxResponse = 1 << 16

// headerSize is the TPM command/response header: tag(2) size(4) code(4).
const headerSize = 10

// conn sends one command and returns the whole response, giving up after
// timeout. Implementations need not be safe for concurrent use: TPM
// serialises them.
type conn interface {
	roundTrip(cmd []byte, timeout time.Duration) ([]byte, error)
	close() error
}

// Address is a parsed TPM address.
type Address struct {
	// Kind is "device", "unix" or "tcp".
	Kind string
	// Path is the device or socket path, or host:port for tcp.
	Path string
}

// String gives the address back in the form ParseAddress accepts.
func (a Address) String() string {
	if a.Kind == "device" {
		return a.Path
	}
	return a.Kind + ":" + a.Path
}

// ParseAddress parses a TPM address:
//
//	"" or "auto"             the first of DevicePaths that exists
//	/dev/tpmrm0              a TPM character device (any absolute path)
//	unix:/run/swtpm/tpm.sock swtpm's raw data socket (--server type=unixio)
//	tcp:127.0.0.1:2321       swtpm's raw data port (--server type=tcp)
//
// "auto" is resolved by Open, so ParseAddress returns Kind "auto" for it.
func ParseAddress(s string) (Address, error) {
	switch {
	case s == "" || s == "auto":
		return Address{Kind: "auto"}, nil
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		if p == "" {
			return Address{}, fmt.Errorf("%w: %q: unix: needs a socket path", ErrBadAddress, s)
		}
		return Address{Kind: "unix", Path: p}, nil
	case strings.HasPrefix(s, "tcp:"):
		hp := strings.TrimPrefix(s, "tcp:")
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" || port == "" {
			return Address{}, fmt.Errorf("%w: %q: tcp: needs host:port", ErrBadAddress, s)
		}
		return Address{Kind: "tcp", Path: hp}, nil
	case strings.HasPrefix(s, "/"):
		return Address{Kind: "device", Path: s}, nil
	}
	return Address{}, fmt.Errorf("%w: %q: want /dev/tpm*, unix:PATH or tcp:HOST:PORT", ErrBadAddress, s)
}

// Present reports whether a TPM device from DevicePaths exists. It does
// not open it.
func Present() (string, bool) {
	for _, p := range DevicePaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeDevice != 0 {
			return p, true
		}
	}
	return "", false
}

func dialAddress(a Address) (conn, Address, error) {
	switch a.Kind {
	case "auto":
		var firstErr error
		for _, p := range DevicePaths {
			c, err := openDevice(p)
			if err == nil {
				return c, Address{Kind: "device", Path: p}, nil
			}
			if firstErr == nil || !errors.Is(err, os.ErrNotExist) {
				firstErr = err
			}
		}
		if errors.Is(firstErr, os.ErrNotExist) {
			return nil, a, fmt.Errorf("%w (tried %s)", ErrNotFound, strings.Join(DevicePaths, ", "))
		}
		return nil, a, firstErr
	case "device":
		c, err := openDevice(a.Path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, a, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		return c, a, err
	case "unix", "tcp":
		if a.Kind == "unix" {
			if _, err := os.Stat(a.Path); err != nil {
				return nil, a, fmt.Errorf("%w: %v", ErrNotFound, err)
			}
		}
		return &sockConn{network: a.Kind, addr: a.Path}, a, nil
	}
	return nil, a, fmt.Errorf("%w: kind %q", ErrBadAddress, a.Kind)
}

// devConn talks to /dev/tpm* or /dev/tpmrm0.
//
// The file is opened with unix.Open and wrapped with os.NewFile so that it
// stays in blocking mode. os.OpenFile would register the fd with Go's
// netpoller (O_NONBLOCK); the kernel then runs the command asynchronously
// and read() returns 0 bytes, which Go reports as a spurious io.EOF.
//
// A blocking read cannot be interrupted, so roundTrip runs the exchange in
// a goroutine and stops waiting after the timeout. busy stays held until
// that exchange really finishes, so a later command never interleaves with
// an abandoned one.
type devConn struct {
	f    *os.File
	busy chan struct{}
}

func openDevice(path string) (conn, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open TPM %s: %w", path, err)
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return nil, fmt.Errorf("open TPM %s: %w: not a character device", path, ErrBadAddress)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open TPM %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	return &devConn{f: os.NewFile(uintptr(fd), path), busy: make(chan struct{}, 1)}, nil
}

type result struct {
	rsp []byte
	err error
}

func (d *devConn) roundTrip(cmd []byte, timeout time.Duration) ([]byte, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case d.busy <- struct{}{}:
	case <-timer.C:
		return nil, fmt.Errorf("%w after %v: an earlier command is still running", ErrTimeout, timeout)
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-d.busy }()
		if _, err := d.f.Write(cmd); err != nil {
			done <- result{err: fmt.Errorf("write command: %w", err)}
			return
		}
		rsp, err := readFrame(d.f)
		done <- result{rsp, err}
	}()
	select {
	case r := <-done:
		return r.rsp, r.err
	case <-timer.C:
		return nil, fmt.Errorf("%w after %v", ErrTimeout, timeout)
	}
}

func (d *devConn) close() error { return d.f.Close() }

// sockConn talks to swtpm's raw data channel. It connects for each
// command, as go-tpm's linuxudstpm does: swtpm serves one connection at a
// time, so holding one open would lock out tpm2-tools and other
// processes. Loopback connects cost microseconds.
type sockConn struct {
	network, addr string
}

func (s *sockConn) roundTrip(cmd []byte, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	c, err := net.DialTimeout(s.network, s.addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("connect %s:%s: %w", s.network, s.addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if _, err := c.Write(cmd); err != nil {
		return nil, fmt.Errorf("write command: %w", timeoutErr(err, timeout))
	}
	rsp, err := readFrame(c)
	return rsp, timeoutErr(err, timeout)
}

func (s *sockConn) close() error { return nil }

func timeoutErr(err error, timeout time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w after %v: %v", ErrTimeout, timeout, err)
	}
	return err
}

// readFrame reads one TPM response: the 10-byte header, then the rest as
// the header's size field says. A single Read is not guaranteed to return
// a whole response on a stream socket. The first read asks for a full
// buffer because a TPM character device returns the whole response in one
// read and may discard what a short read leaves behind.
func readFrame(r io.Reader) ([]byte, error) {
	buf := make([]byte, 4096)
	n := 0
	for n < headerSize {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil && n < headerSize {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("read response: %w after %d of %d header bytes", io.ErrUnexpectedEOF, n, headerSize)
			}
			return nil, fmt.Errorf("read response: %w", err)
		}
		if m == 0 && err == nil {
			return nil, fmt.Errorf("read response: %w: empty read", io.ErrUnexpectedEOF)
		}
	}
	size := int(binary.BigEndian.Uint32(buf[2:6]))
	if size < headerSize || size > maxResponse {
		return nil, fmt.Errorf("%w: response size field %d", ErrBadResponse, size)
	}
	if size > len(buf) {
		nb := make([]byte, size)
		copy(nb, buf[:n])
		buf = nb
	}
	if n > size {
		return nil, fmt.Errorf("%w: %d bytes for a %d-byte response", ErrBadResponse, n, size)
	}
	if _, err := io.ReadFull(r, buf[n:size]); err != nil {
		return nil, fmt.Errorf("read response body (%d bytes): %w", size, err)
	}
	return buf[:size], nil
}
