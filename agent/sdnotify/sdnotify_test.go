package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	dir, _ := os.MkdirTemp("", "sdn")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	n := FromEnv()
	if !n.Enabled() {
		t.Fatal("not enabled")
	}
	for _, send := range []func() error{n.Ready, func() error { return n.Status("connected\nx") }, n.Watchdog} {
		if err := send(); err != nil {
			t.Fatal(err)
		}
	}
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for _, want := range []string{"READY=1", "STATUS=connected x", "WATCHDOG=1"} {
		k, err := ln.Read(buf)
		if err != nil || string(buf[:k]) != want {
			t.Fatalf("got %q, %v; want %q", buf[:k], err, want)
		}
	}
}

func TestDisabledAndWatchdog(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := FromEnv().Ready(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	if d, err := WatchdogInterval(); err != nil || d != 15*time.Second {
		t.Fatalf("interval %v %v", d, err)
	}
	t.Setenv("WATCHDOG_PID", "1")
	if d, _ := WatchdogInterval(); d != 0 {
		t.Fatal("watchdog for another pid")
	}
}
