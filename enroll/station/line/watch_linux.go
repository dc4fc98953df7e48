package line

import (
	"bytes"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Netlink multicast groups of NETLINK_KOBJECT_UEVENT: the kernel's
// uevents, and udev's after it has made the /dev/serial links.
const (
	groupKernel = 1
	groupUdev   = 2
)

// watchUevents listens to uevents when mode allows and returns a channel
// that receives (coalesced) after each tty uevent, and a stop function.
// With WatchPoll, or WatchAuto where the socket cannot be had, the channel
// never receives and the periodic scan alone finds boards.
func watchUevents(mode string) (<-chan struct{}, func(), error) {
	trigger := make(chan struct{}, 1)
	if mode == WatchPoll {
		return trigger, func() {}, nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groupKernel | groupUdev})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		if mode == WatchNetlink {
			return nil, nil, fmt.Errorf("watch = %q: listen to uevents: %w (use watch = %q)", mode, err, WatchPoll)
		}
		return trigger, func() {}, nil
	}
	// A receive timeout lets the reader notice stop without closing the
	// fd under a blocked recvfrom.
	tv := unix.NsecToTimeval(int64(500 * time.Millisecond))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(fd)
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			if !isTTYUevent(buf[:n]) {
				continue
			}
			// udev makes the by-id links after the kernel event: scan on
			// both, and once more shortly after.
			fire(trigger)
			time.AfterFunc(200*time.Millisecond, func() { fire(trigger) })
		}
	}()
	return trigger, func() { close(stop); <-done }, nil
}

func fire(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// isTTYUevent reports whether a uevent message (kernel: "ACTION@DEVPATH\0
// KEY=VALUE\0..."; udev: a binary header, then the same KEY=VALUE pairs)
// is about the tty subsystem or a USB serial interface.
func isTTYUevent(msg []byte) bool {
	for _, kv := range bytes.Split(msg, []byte{0}) {
		switch string(kv) {
		case "SUBSYSTEM=tty", "SUBSYSTEM=usb-serial", "SUBSYSTEM=usb":
			return true
		}
	}
	return false
}
