package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"devid/enroll/factory"
	"devid/hal/serial/serialtest"
	"devid/hal/usbgadget"
	"devid/hal/usbgadget/gadgettest"
)

// TestFactoryUSBGadget: devid-agent factory --usb-gadget makes the gadget
// with the device ID as USB serial number, answers the jig on the
// gadget's tty (here a pty behind the fake /dev/ttyGS0), and removes the
// gadget when it is stopped.
func TestFactoryUSBGadget(t *testing.T) {
	fake := gadgettest.New(t, "dummy_udc.0")
	pair := serialtest.Pty(t)
	fake.TTY = func(int) string { return pair.TTY }
	o := usbFactory(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runFactory(ctx, "", o) }()

	// The jig: HELLO until the device answers (it opens the tty once the
	// gadget is bound; a HELLO sent before may be lost).
	r := factory.NewLineReader(pair.Master)
	var hello factory.Frame
	for try := 0; hello.Verb == ""; try++ {
		if try == 30 {
			t.Fatal("no answer to HELLO on the gadget's tty")
		}
		if _, err := pair.Master.Write(factory.Encode(1, "HELLO")); err != nil {
			t.Fatal(err)
		}
		for {
			line, err := r.Next(ctx, time.Now().Add(time.Second), 0)
			if err != nil {
				break
			}
			if f, err := factory.ParseFrame(line); err == nil && f.Seq == 1 && f.Verb == "OK" {
				hello = f
				break
			}
		}
	}
	if !slices.Contains(hello.Args, "id=board-usb-1") {
		t.Fatalf("HELLO answer %q does not carry the device ID", hello.Args)
	}
	serial := filepath.Join(fake.Root, "config/usb_gadget/devid/strings/0x409/serialnumber")
	if b, err := os.ReadFile(serial); err != nil || string(b) != "board-usb-1" {
		t.Fatalf("USB serial number %q, %v", b, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(fake.Root, "config/usb_gadget/*")); len(left) > 0 {
		t.Fatalf("gadget left after the factory command stopped: %v", left)
	}
	ops := fake.Ops()
	if last := ops[len(ops)-1]; last != "remove config/usb_gadget/devid" {
		t.Fatalf("last change %q (all: %s)", last, strings.Join(ops, "; "))
	}
}

// TestFactoryUSBGadgetMissing: without a UDC the command fails naming it,
// and --port with --usb-gadget is a usage error.
func TestFactoryUSBGadgetMissing(t *testing.T) {
	o := usbFactory(t, gadgettest.New(t)) // no UDC
	err := runFactory(context.Background(), "", o)
	if err == nil || !strings.Contains(err.Error(), "factory.usb_gadget: no USB device controller") || !strings.Contains(err.Error(), "dummy_hcd") {
		t.Fatalf("err = %v", err)
	}
	o.port = "/dev/ttyS0"
	if err := runFactory(context.Background(), "", o); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("--port with --usb-gadget: %v", err)
	}
}

// usbFactory points the factory command at the fake configfs (until the
// test ends) and returns the overrides of "devid-agent factory
// --usb-gadget" for device board-usb-1, with its state in a temporary
// directory and a factory root.
func usbFactory(t *testing.T, fake *gadgettest.Fake) factoryOverrides {
	t.Helper()
	gadgetSystem = fake.System()
	t.Cleanup(func() { gadgetSystem = usbgadget.System{} })
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, []byte(selfSignedPEM(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	return factoryOverrides{usbGadget: true, stateDir: filepath.Join(dir, "state"),
		keySpec: "file:" + filepath.Join(dir, "state", "device.key"), deviceID: "board-usb-1", root: root}
}
