package tpm

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"devid/hal/serial/serialtest"
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
	pair := serialtest.Pty(t) // raw mode, closed when the test ends
	ptmx := pair.Master
	go func() {
		for {
			cmd, err := readFrame(ptmx)
			if err != nil {
				return
			}
			if target == "" {
				continue // wedged: never answer
			}
			rsp, err := forward(target, cmd)
			if err != nil {
				return
			}
			ptmx.Write(rsp)
		}
	}()
	return pair.TTY
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
