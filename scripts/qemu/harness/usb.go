package main

import (
	"context"
	"fmt"
	"strings"
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
	fb, err := newFlashBoard(ctx, o, env, "usb-adapter", "/dev/ttyUSB0")
	if err != nil {
		return err
	}
	defer fb.sim.stop()
	spec := fb.spec
	spec.Forwards, spec.FactoryBus = nil, "ftdi" // the factory: no route to the cloud
	_, err = factoryBoot(ctx, o, spec, fb.caDir, fb.rootPEM)
	return err
}

// usbGadget is factory programming through the board's own USB device
// port: the agent makes a CDC ACM gadget (factory.usb_gadget) on the
// UDC of dummy_hcd, whose host side, in the same kernel, stands for the
// jig PC; the board relays that /dev/ttyACM* to the harness over
// virtio-serial. The host side must see the board with its device ID as
// the USB serial number. The cable is pulled mid-INSTALL (the gadget's
// UDC unbound) and plugged back; the board must then be blank or keyed,
// never half, and be programmed by the next run.
func usbGadget(ctx context.Context, o options, env map[string]string) error {
	fb, err := newFlashBoard(ctx, o, env, "usb-gadget", "")
	if err != nil {
		return err
	}
	defer fb.sim.stop()
	caDir, rootPEM := fb.caDir, fb.rootPEM
	spec := fb.spec
	spec.Forwards, spec.FactoryBus = nil, "gadget" // the factory: no route to the cloud
	spec.Cmdline = []string{"devid.usbrelay=/dev/ttyACM*"}
	b, err := startBoard(ctx, spec, 1, logf)
	if err != nil {
		return err
	}
	defer b.kill()
	if _, err := b.waitLine(ctx, `serving factory bus`, 2*time.Minute); err != nil {
		return err
	}
	// What a PC sees of the board, from the host side's sysfs.
	var seen string
	err = poll(ctx, 20*time.Second, "the board enumerated on the USB host side", func() (bool, error) {
		ans, err := b.control(ctx, "usb-host")
		seen = ans
		return err == nil && strings.Contains(ans, "serial="), err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b.tail(8))
	}
	logf("usb-gadget: host side: %s", strings.TrimPrefix(seen, "ok "))
	res, err := program(ctx, o, caDir, b)
	if err != nil {
		return err
	}
	if want := "serial=" + res.DeviceID + " "; !strings.Contains(seen+" ", want) || !strings.Contains(seen, "id=1d6b:0104") {
		return fmt.Errorf("the host saw %q; want id=1d6b:0104 and serial=%s (the device ID)", seen, res.DeviceID)
	}
	if err := checkProgrammed(res, rootPEM); err != nil {
		return err
	}
	// Programmed, the agent leaves factory mode and removes its gadget:
	// the host loses the device.
	err = poll(ctx, 30*time.Second, "the gadget removed after programming", func() (bool, error) {
		ans, err := b.control(ctx, "usb-host")
		return err == nil && ans == "ok none", err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b.tail(8))
	}
	logf("usb-gadget: programmed device %s over the gadget (USB serial = device ID, key in %s, serial %s); gadget removed; powering off",
		res.DeviceID, res.KeyBackend, res.Serial)
	return b.powerOff(ctx)
}
