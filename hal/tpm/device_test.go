package tpm

import (
	"context"
	"crypto"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"devid/hal/tpm/tpmtest"
)

// ptyDevice returns the path of a character device that behaves like a
// TPM device node: a raw-mode pty whose other side forwards each command
// to swtpm (when target is set) or swallows it (a wedged TPM). It is how
// the blocking-open, framing and timeout code of the /dev/tpm* transport
// gets exercised on a host without a TPM driver; the QEMU board test
// covers the real kernel driver.
func ptyDevice(t *testing.T, target string) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ptmx.Close(); tty.Close() })
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	// cfmakeraw: no echo, no line editing, no CR/NL translation.
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB
	tio.Cflag |= unix.CS8
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(int(tty.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			cmd, err := readFrame(ptmx)
			if err != nil {
				return
			}
			if target == "" {
				continue // wedged: never answer
			}
			c, err := net.Dial("unix", target)
			if err != nil {
				return
			}
			c.Write(cmd)
			rsp, err := readFrame(c)
			c.Close()
			if err != nil {
				return
			}
			ptmx.Write(rsp)
		}
	}()
	return tty.Name()
}

func TestDevicePath(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	dev := ptyDevice(t, sw.Sock)
	tp := openT(t, dev)
	if tp.Addr() != dev {
		t.Errorf("Addr() = %q, want %q", tp.Addr(), dev)
	}
	k := newKey(t, tp)
	for range 20 {
		signVerify(t, k, crypto.SHA256)
	}
}

func TestDeviceTimeout(t *testing.T) {
	t.Parallel()
	dev := ptyDevice(t, "")
	_, err := Open(context.Background(), dev, WithTimeouts(Timeouts{Other: 50 * time.Millisecond}))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Open on a wedged device = %v, want ErrTimeout", err)
	}
}

// TestAutoDevice: "auto" takes the first of DevicePaths that exists.
// Not parallel: it swaps DevicePaths.
func TestAutoDevice(t *testing.T) {
	sw := tpmtest.Start(t)
	dev := ptyDevice(t, sw.Sock)
	old := DevicePaths
	t.Cleanup(func() { DevicePaths = old })

	DevicePaths = []string{filepath.Join(t.TempDir(), "tpmrm0"), filepath.Join(t.TempDir(), "tpm0")}
	if _, err := Open(context.Background(), ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("auto with no device = %v, want ErrNotFound", err)
	}
	if _, ok := Present(); ok {
		t.Error("Present() with no device")
	}

	DevicePaths = []string{filepath.Join(t.TempDir(), "tpmrm0"), dev}
	if p, ok := Present(); !ok || p != dev {
		t.Errorf("Present() = %q, %v", p, ok)
	}
	tp := openT(t, "auto")
	if tp.Addr() != dev {
		t.Errorf("auto resolved to %q, want %q", tp.Addr(), dev)
	}
	if _, err := tp.CreateKey(context.Background()); err != nil {
		t.Fatal(err)
	}
}
