package main

import (
	"context"
	"path/filepath"
	"time"
)

// usbAdapter is factory programming through a USB serial adapter: the
// board's factory port is QEMU's FTDI emulation on an xHCI controller,
// which the board's kernel (ftdi_sio) makes /dev/ttyUSB0. The jig programs
// the board through it with the key in the TPM and attestation required;
// the cable is pulled mid-INSTALL (the adapter leaves the board's USB bus)
// and plugged back, and the board must then be blank or keyed, never half,
// and be programmed by the next run.
func usbAdapter(ctx context.Context, o options, env map[string]string) error {
	dir, err := filepath.Abs(filepath.Join(o.work, "usb-adapter"))
	if err != nil {
		return err
	}
	if err := freshDir(dir); err != nil {
		return err
	}
	s, caDir, rootPEM, err := startLine(ctx, o, dir, "qemu-board-line")
	if err != nil {
		return err
	}
	defer s.stop()
	if _, err := prepareFlash(dir, s, rootPEM, "/dev/ttyUSB0"); err != nil {
		return err
	}
	mac, err := boardMAC()
	if err != nil {
		return err
	}
	spec := boardSpec{
		Arch: o.arch, Kernel: env["KERNEL"], Initrd: env["INITRD"], Dir: dir,
		MAC: mac, Timeout: 4 * time.Minute, FactoryBus: "ftdi",
	}
	_, err = factoryBoot(ctx, o, spec, caDir, rootPEM)
	return err
}
