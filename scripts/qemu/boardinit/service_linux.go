package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"devid/agent/sdnotify"
)

// switchRoot mounts dev as the new root and execs its /sbin/init (systemd)
// as PID 1, as an initramfs's switch_root does: /dev, /proc and /sys move
// over, the initramfs's files are freed.
func switchRoot(dev string) error {
	if err := waitFor(dev, 10*time.Second); err != nil {
		return err
	}
	_ = os.MkdirAll("/newroot", 0o755)
	if err := unix.Mount(dev, "/newroot", "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	for _, m := range []string{"/dev/pts", "/run", "/tmp"} {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(m, "/newroot"+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
	}
	for _, p := range []string{"/bin", "/lib", "/modules.list", "/init"} {
		_ = os.RemoveAll(p)
	}
	if err := os.Chdir("/newroot"); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	_ = os.Chdir("/")
	logf("devid-board: switching to /sbin/init on %s", dev)
	return unix.Exec("/sbin/init", []string{"/sbin/init"}, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=vt100"})
}

// serviceMain runs the board's helpers as systemd services on the Debian
// board:
//
//	devid-board vtpm PORT   the TPM: swtpm on the host over the virtio-serial
//	                        port PORT, bridged into /dev/tpmrm0 (Type=notify)
//	devid-board ctl PORT    the harness's control channel: runs the commands
//	                        the host sends (test image only)
func serviceMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: devid-board vtpm|ctl VIRTIO-PORT-NAME (or run as PID 1)")
		return 2
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	switch args[0] {
	case "vtpm":
		if err := startVTPM(args[1]); err != nil {
			fmt.Fprintf(os.Stderr, "devid-board vtpm: %v\n", err)
			return 1
		}
		_ = sdnotify.FromEnv().Ready()
		<-term
		// Exiting closes the proxy fd: the kernel removes the TPM device,
		// so nothing waits on a bridge that is gone.
		return 0
	case "ctl":
		dev, err := findVirtioPort(args[1], 10*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "devid-board ctl: %v\n", err)
			return 1
		}
		go serveControl(dev)
		<-term
		return 0
	}
	fmt.Fprintf(os.Stderr, "devid-board: unknown service %q\n", args[0])
	return 2
}

// serveControl answers "exec ID BASE64-COMMAND" lines with
// "ok ID EXIT-CODE BASE64-OUTPUT" (stdout and stderr together; at most two
// minutes per command) and "ping" with "ok pong". The ID is the host's: a
// host that gave up waiting for one answer drops it by its ID when it comes
// late, instead of taking it as the answer to its next command.
func serveControl(dev string) {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devid-board ctl: open %s: %v\n", dev, err)
		os.Exit(1)
	}
	f := os.NewFile(uintptr(fd), dev) // blocking: a dedicated thread reads it
	logf("control: listening on %s", dev)
	for {
		r := bufio.NewReader(f)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				// No host end connected yet: reads return 0 bytes.
				time.Sleep(50 * time.Millisecond)
				break
			}
			fmt.Fprintln(f, runControl(strings.TrimSpace(line)))
		}
	}
}

func runControl(line string) string {
	verb, arg, _ := strings.Cut(line, " ")
	switch verb {
	case "ping":
		return "ok pong"
	case "exec":
		id, arg, _ := strings.Cut(arg, " ")
		cmdline, err := base64.StdEncoding.DecodeString(arg)
		if err != nil {
			return fmt.Sprintf("error %s bad base64", id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", string(cmdline))
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
		out, err := cmd.CombinedOutput()
		code := 0
		if err != nil {
			code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
		}
		return fmt.Sprintf("ok %s %d %s", id, code, base64.StdEncoding.EncodeToString(out))
	}
	return fmt.Sprintf("error unknown command %q", verb)
}
