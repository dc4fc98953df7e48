package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The board's own USB device port, for the usb-gadget scenario: dummy_hcd
// gives the board a virtual UDC and, plugged into it, a virtual host
// controller. The agent's gadget (hal/usbgadget) binds to the UDC; on the
// host side cdc_acm makes it /dev/ttyACM*, which stands for the jig PC's
// end of the USB cable. The relay carries that end to the harness over a
// virtio-serial port, and the control channel pulls and plugs the cable
// (the gadget's UDC unbound and bound again) and reads what the host side
// enumerated.

// gadgetUDC is the agent's gadget's UDC attribute (hal/usbgadget's
// default name).
const gadgetUDC = "/sys/kernel/config/usb_gadget/devid/UDC"

// mountConfigfs mounts configfs once its module is loaded (libcomposite
// pulls it in), as systemd does at boot.
func mountConfigfs() {
	if _, err := os.Stat("/sys/kernel/config"); err != nil {
		return
	}
	if err := unix.Mount("configfs", "/sys/kernel/config", "configfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && err != unix.EBUSY {
		logf("mount configfs: %v", err)
		return
	}
	logf("configfs mounted on /sys/kernel/config")
}

// usbRelay joins the tty matching glob, whenever there is one, to a
// virtio-serial port. Bytes from the harness while no tty exists (the
// cable is out) are dropped, as on a pulled cable.
type usbRelay struct {
	mu  sync.Mutex
	tty *os.File
}

func startUSBRelay(glob, portName string) error {
	port, err := findVirtioPort(portName, 5*time.Second)
	if err != nil {
		return err
	}
	fd, err := unix.Open(port, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", port, err)
	}
	vp := os.NewFile(uintptr(fd), port) // blocking: dedicated threads
	r := &usbRelay{}
	go r.fromHarness(vp)
	go r.toHarness(glob, vp)
	logf("usb relay: %s <-> %s", glob, port)
	return nil
}

func (r *usbRelay) fromHarness(vp *os.File) {
	buf := make([]byte, 4096)
	for {
		n, err := vp.Read(buf)
		if n == 0 || err != nil {
			// virtio-serial reads return 0 while no host end is connected.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		r.mu.Lock()
		tty := r.tty
		r.mu.Unlock()
		if tty != nil {
			_, _ = tty.Write(buf[:n])
		}
	}
}

func (r *usbRelay) toHarness(glob string, vp *os.File) {
	buf := make([]byte, 4096)
	for {
		matches, _ := filepath.Glob(glob)
		if len(matches) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		tty, err := openRaw(matches[0])
		if err != nil {
			logf("usb relay: %v", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		logf("usb relay: %s up", tty.Name())
		r.mu.Lock()
		r.tty = tty
		r.mu.Unlock()
		for {
			n, err := tty.Read(buf)
			if n > 0 {
				_, _ = vp.Write(buf[:n])
				continue
			}
			// A hung-up tty reads 0; a removed one fails: the cable is out.
			logf("usb relay: %s down (%v)", tty.Name(), err)
			break
		}
		r.mu.Lock()
		r.tty = nil
		r.mu.Unlock()
		tty.Close()
		time.Sleep(50 * time.Millisecond)
	}
}

// openRaw opens a tty blocking, in raw mode (cdc_acm starts cooked, with
// echo, which would loop the jig's frames back at it).
func openRaw(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err == nil {
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		err = unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("raw mode on %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// unpluggedUDC is the UDC the gadget was bound to before usb-unplug.
var unpluggedUDC string

// usbCable pulls ("unplug": the gadget's UDC unbound, as the kernel sees
// a cable pull: the host loses the device, the gadget's tty hangs up) or
// plugs the cable back ("plug": bound again).
func usbCable(plug bool) (string, error) {
	if !plug {
		b, err := os.ReadFile(gadgetUDC)
		if err != nil {
			return "", err
		}
		udc := strings.TrimSpace(string(b))
		if udc == "" {
			return "", fmt.Errorf("the gadget is not bound")
		}
		if err := os.WriteFile(gadgetUDC, []byte("\n"), 0); err != nil {
			return "", err
		}
		unpluggedUDC = udc
		return "unplugged " + udc, nil
	}
	if unpluggedUDC == "" {
		return "", fmt.Errorf("no usb-unplug before")
	}
	if err := os.WriteFile(gadgetUDC, []byte(unpluggedUDC), 0); err != nil {
		return "", err
	}
	return "plugged " + unpluggedUDC, nil
}

// usbHostDevices lists the USB devices the board's dummy host controller
// enumerated, from its sysfs: what a PC sees of the board.
func usbHostDevices() string {
	var out []string
	devs, _ := filepath.Glob("/sys/bus/usb/devices/*")
	for _, d := range devs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil || !strings.Contains(real, "dummy_hcd") || strings.Contains(filepath.Base(d), ":") {
			continue
		}
		if strings.HasPrefix(filepath.Base(d), "usb") {
			continue // the root hub
		}
		attr := func(name string) string {
			b, _ := os.ReadFile(filepath.Join(d, name))
			return strings.TrimSpace(string(b))
		}
		out = append(out, fmt.Sprintf("dev=%s id=%s:%s serial=%s product=%q", filepath.Base(d), attr("idVendor"), attr("idProduct"),
			attr("serial"), attr("product")))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}
