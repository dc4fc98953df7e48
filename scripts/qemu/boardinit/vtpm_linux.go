package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vtpmProxyNewDev is VTPM_PROXY_IOC_NEW_DEV: _IOWR(0xa1, 0x00, struct vtpm_proxy_new_dev).
const vtpmProxyNewDev = 0xc014a100

// startVTPM creates a TPM 2.0 device with tpm_vtpm_proxy and forwards every
// command the kernel hands it to the host swtpm over the virtio-serial port
// with this name. The agent then opens /dev/tpmrm0 exactly as on a board
// with a discrete TPM; only the driver beneath differs. The bridge runs until
// power-off: if it stopped answering, every TPM call (and the kernel's
// TPM2_Shutdown at power-off) would wait for the kernel's timeouts.
func startVTPM(portName string) error {
	port, err := findVirtioPort(portName, 5*time.Second)
	if err != nil {
		return err
	}
	// Open blocking: a pollable fd under Go's netpoller makes reads return
	// early (0 bytes) on TPM devices; these fds get dedicated threads.
	pfd, err := unix.Open(port, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", port, err)
	}
	ctl, err := unix.Open("/dev/vtpmx", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/vtpmx (is tpm_vtpm_proxy loaded?): %w", err)
	}
	defer unix.Close(ctl)
	var d struct{ Flags, TPMNum, Fd, Major, Minor uint32 }
	d.Flags = 1 // VTPM_PROXY_FLAG_TPM2
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(ctl), vtpmProxyNewDev, uintptr(unsafe.Pointer(&d))); e != 0 {
		return fmt.Errorf("VTPM_PROXY_IOC_NEW_DEV: %w", e)
	}
	dev := os.NewFile(uintptr(d.Fd), "vtpm")
	swtpm := os.NewFile(uintptr(pfd), port)
	go bridgeTPM(dev, swtpm)
	if err := waitFor("/dev/tpmrm0", 10*time.Second); err != nil {
		return err
	}
	logf("tpm: /dev/tpm%d and /dev/tpmrm%d bridged to swtpm over %s", d.TPMNum, d.TPMNum, port)
	return nil
}

func bridgeTPM(dev, swtpm *os.File) {
	cmd := make([]byte, 4096)
	rsp := make([]byte, 4096)
	for {
		n, err := dev.Read(cmd)
		if err != nil {
			logf("devid-board: vtpm bridge stopped: read command: %v", err)
			return
		}
		if _, err := swtpm.Write(cmd[:n]); err != nil {
			logf("devid-board: vtpm bridge stopped: write to swtpm: %v", err)
			return
		}
		// A response is a 10-byte header with the total size at bytes 2..6.
		if _, err := io.ReadFull(swtpm, rsp[:10]); err != nil {
			logf("devid-board: vtpm bridge stopped: read response: %v", err)
			return
		}
		size := int(binary.BigEndian.Uint32(rsp[2:6]))
		if size < 10 || size > len(rsp) {
			logf("devid-board: vtpm bridge stopped: bad response size %d", size)
			return
		}
		if _, err := io.ReadFull(swtpm, rsp[10:size]); err != nil {
			logf("devid-board: vtpm bridge stopped: read response body: %v", err)
			return
		}
		if _, err := dev.Write(rsp[:size]); err != nil {
			logf("devid-board: vtpm bridge: write response: %v", err)
		}
	}
}
