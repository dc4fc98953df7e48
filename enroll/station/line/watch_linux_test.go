package line

import (
	"os"
	"testing"
	"time"

	"devid/hal/hosttest"
)

func TestIsTTYUevent(t *testing.T) {
	for msg, want := range map[string]bool{
		"add@/devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0\x00ACTION=add\x00DEVPATH=/devices/x\x00SUBSYSTEM=tty\x00DEVNAME=ttyUSB0\x00": true,
		"remove@/devices/x\x00ACTION=remove\x00SUBSYSTEM=usb\x00":                                                                                  true,
		"libudev\x00\xfe\xed\xca\xfeSUBSYSTEM=tty\x00":                                                                                             false, // the header runs into the first key
		"libudev\x00\xfe\xed\xca\xfe\x00ACTION=add\x00SUBSYSTEM=tty":                                                                               true,
		"add@/devices/x\x00ACTION=add\x00SUBSYSTEM=block\x00DEVNAME=sda\x00":                                                                       false,
		"add@/devices/x\x00SUBSYSTEM=ttyx\x00":                                                                                                     false,
	} {
		if got := isTTYUevent([]byte(msg)); got != want {
			t.Errorf("isTTYUevent(%q) = %v, want %v", msg, got, want)
		}
	}
}

// TestNetlinkUevent: a synthetic "change" uevent of tty0 (written to its
// sysfs uevent file, which needs root) reaches the watcher.
func TestNetlinkUevent(t *testing.T) {
	if os.Geteuid() != 0 {
		hosttest.Unavailable(t, hosttest.Root, "a synthetic uevent needs root")
	}
	trigger, stop, err := watchUevents(WatchNetlink)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	const uevent = "/sys/class/tty/tty0/uevent"
	if err := os.WriteFile(uevent, []byte("change"), 0); err != nil {
		hosttest.Unavailable(t, hosttest.Root, "write %s: %v", uevent, err)
	}
	select {
	case <-trigger:
	case <-time.After(30 * time.Second):
		t.Fatal("no trigger from the tty0 change uevent")
	}
}
