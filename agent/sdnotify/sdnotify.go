// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): one
// datagram of "KEY=VALUE\n" lines to the Unix socket named by
// $NOTIFY_SOCKET, plus the watchdog interval from $WATCHDOG_USEC.
// Without those variables every call is a no-op.
package sdnotify

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends notifications to the service manager.
type Notifier struct {
	addr *net.UnixAddr
}

// FromEnv returns a notifier for $NOTIFY_SOCKET; nil-safe methods make a
// missing socket a no-op. An address starting with '@' is an abstract
// socket.
func FromEnv() *Notifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return &Notifier{}
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	return &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
}

// Enabled reports whether a service manager listens.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends one notification, e.g. "READY=1" or "STATUS=connected".
// Several may be joined with "\n".
func (n *Notifier) Send(state string) error {
	if !n.Enabled() {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// Ready tells systemd start-up is complete.
func (n *Notifier) Ready() error { return n.Send("READY=1") }

// Stopping tells systemd the service is shutting down.
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Status sets the one-line status shown by systemctl status. Newlines
// would start a new assignment, so they are replaced.
func (n *Notifier) Status(s string) error {
	return n.Send("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}

// Watchdog pets the watchdog.
func (n *Notifier) Watchdog() error { return n.Send("WATCHDOG=1") }

// WatchdogInterval returns how often to pet the watchdog (half of
// $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or 0 when the
// watchdog is off or meant for another process ($WATCHDOG_PID).
func WatchdogInterval() (time.Duration, error) {
	s := os.Getenv("WATCHDOG_USEC")
	if s == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0, nil
	}
	us, err := strconv.ParseUint(s, 10, 63)
	if err != nil || us == 0 {
		return 0, errors.New("WATCHDOG_USEC is not a positive integer")
	}
	return time.Duration(us) * time.Microsecond / 2, nil
}
