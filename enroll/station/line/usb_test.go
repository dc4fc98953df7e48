package line_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// TestUSBSlotFollowsTheBoard: a slot named usb:SERIAL finds the board by
// its USB serial number (the device ID its gadget carries) in sysfs, and
// when the board resets mid-run and comes back as another tty (ttyACM0,
// then ttyACM1) the slot follows it there and programs it.
func TestUSBSlotFollowsTheBoard(t *testing.T) {
	l := newCA(t)
	roots := rootPool(l)
	root := t.TempDir()
	sys, dev := filepath.Join(root, "sys"), filepath.Join(root, "dev")
	usbDev := filepath.Join(sys, "devices/pci0000:00/0000:00:01.0/usb1/1-1")
	iface := filepath.Join(usbDev, "1-1:1.0")
	for p, v := range map[string]string{filepath.Join(usbDev, "idVendor"): "1d6b\n", filepath.Join(usbDev, "serial"): "board-0042\n"} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(iface, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	// enumerate makes ttyN the board's tty, as cdc_acm and udev would.
	enumerate := func(name, tty string) {
		class := filepath.Join(sys, "class/tty", name)
		if err := os.MkdirAll(class, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(iface, filepath.Join(class, "device")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(tty, filepath.Join(dev, name)); err != nil {
			t.Fatal(err)
		}
	}
	gone := func(name string) {
		if err := os.RemoveAll(filepath.Join(sys, "class/tty", name)); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dev, name)); err != nil {
			t.Fatal(err)
		}
	}

	// The first run cannot finish: the board is resetting and does not
	// answer on ttyACM0.
	first := serialtest.Pty(t)
	enumerate("ttyACM0", first.TTY)

	cfg := slotsConfig(t.TempDir(), "usb:board-0042")
	ev := newEvents(t)
	st, err := line.New(cfg, line.Options{CA: l, Ledger: l, Jig: jig.Options{Roots: roots}, Events: ev,
		USB: serial.USBResolver{Dev: dev, Sys: sys}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if _, err := st.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	if e := ev.next(ctx, line.EventPlugged); e.Port != filepath.Join(dev, "ttyACM0") {
		t.Fatalf("plugged on %q, want ttyACM0", e.Port)
	}
	// It comes back as ttyACM1: the slot leaves the run on ttyACM0
	// (unplugged) and programs the board where it is now.
	second := serialtest.Pty(t)
	serveDevice(t, second.Master, "board-0042", roots, 0)
	gone("ttyACM0")
	enumerate("ttyACM1", second.TTY)
	var failed, plugged, done line.Event
	for done.Type == "" {
		switch e := ev.next(ctx, line.EventFailed, line.EventPlugged, line.EventProgrammed); e.Type {
		case line.EventFailed:
			failed = e
		case line.EventPlugged:
			plugged = e
		default:
			done = e
		}
	}
	if failed.Cause != line.CauseUnplugged || failed.Port != filepath.Join(dev, "ttyACM0") {
		t.Fatalf("the run on ttyACM0: %+v, want failed, unplugged", failed)
	}
	if plugged.Port != filepath.Join(dev, "ttyACM1") {
		t.Fatalf("plugged again on %q, want ttyACM1", plugged.Port)
	}
	if done.DeviceID != "board-0042" || done.Port != filepath.Join(dev, "ttyACM1") {
		t.Fatalf("after the reset: %+v, want board-0042 programmed on ttyACM1", done)
	}
	if v := st.Snapshot(); len(v.Slots) != 1 || v.Slots[0].DeviceID != "board-0042" || v.Slots[0].State != line.StateProgrammed {
		t.Fatalf("slot view %+v", v.Slots)
	}
	cancel()
	<-runDone
}
