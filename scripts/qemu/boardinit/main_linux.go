package main

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var start = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "[board +%.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// cmdline holds the devid.* keys of /proc/cmdline.
type cmdline map[string]string

func (c cmdline) get(key, def string) string {
	if v, ok := c[key]; ok {
		return v
	}
	return def
}

func readCmdline() cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return parseCmdline(string(b))
}

// parseCmdline keeps the devid.* keys of a kernel command line, without
// the prefix. A key given twice keeps its last value, as the kernel does.
func parseCmdline(line string) cmdline {
	c := cmdline{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.HasPrefix(k, "devid.") {
			c[strings.TrimPrefix(k, "devid.")] = v
		}
	}
	return c
}

func main() {
	if os.Getpid() != 1 {
		// On the Debian board the same binary runs as services under
		// systemd (service_linux.go).
		os.Exit(serviceMain(os.Args[1:]))
	}
	// PID 1 must never return or panic: the kernel would panic in turn.
	// Every fatal path powers off instead, with a marker the harness sees.
	defer func() {
		if r := recover(); r != nil {
			logf("devid-board: FATAL panic: %v\n%s", r, debug.Stack())
			powerOff()
		}
	}()
	b := &board{agentExit: make(chan int, 1), ctlPoweroff: make(chan struct{}, 1)}
	b.run()
}

type board struct {
	cfg         cmdline
	mu          sync.Mutex
	agentPid    int
	agentExit   chan int // exit status of the agent, by the reaper
	ctlPoweroff chan struct{}
	flashMnt    bool
}

func (b *board) fatal(format string, args ...any) {
	logf("devid-board: FATAL "+format, args...)
	b.shutdown()
}

func (b *board) run() {
	mountBase()
	b.cfg = readCmdline()
	// The kernel's own boot time, for the boot-to-connected breakdown
	// (docs/benchmarks.md): /proc/uptime counts from the kernel's start.
	logf("devid-board: init started at kernel uptime %ss, kernel cmdline keys %v", kernelUptime(), b.cfg)
	go b.reap()

	if err := loadModules("/modules.list"); err != nil {
		b.fatal("modules: %v", err)
	}
	// The USB stack only where the board has USB in use: probing it is
	// boot time the others would pay for nothing.
	if b.cfg.get("usb", "") == "1" {
		if err := loadModules("/modules-usb.list"); err != nil {
			b.fatal("usb modules: %v", err)
		}
	}
	mountConfigfs()
	if ip := b.cfg.get("ip", "10.0.2.15/24"); ip != "" {
		if err := configureNet("eth0", ip, b.cfg.get("gw", "10.0.2.2")); err != nil {
			b.fatal("network: %v", err)
		}
		logf("net: eth0 %s gw %s", ip, b.cfg.get("gw", "10.0.2.2"))
	}
	if root := b.cfg.get("root", ""); root != "" {
		// The Debian board: hand over to systemd on the root disk. The
		// modules stay loaded and eth0 stays configured; the TPM bridge
		// and the control channel run there as services.
		if err := switchRoot(root); err != nil {
			b.fatal("switch root to %s: %v", root, err)
		}
	}
	if name := b.cfg.get("vtpm", "swtpm"); name != "" {
		if err := startVTPM(name); err != nil {
			b.fatal("vtpm: %v", err)
		}
	}
	if name := b.cfg.get("ctl", "devid.ctl"); name != "" {
		if err := b.startControl(name); err != nil {
			b.fatal("control port: %v", err)
		}
	}
	if glob := b.cfg.get("usbrelay", ""); glob != "" {
		if err := startUSBRelay(glob, "devid.factory"); err != nil {
			b.fatal("usb relay: %v", err)
		}
	}
	if dev := b.cfg.get("flash", "/dev/vda"); dev != "" {
		if err := b.mountFlash(dev); err != nil {
			b.fatal("flash: %v", err)
		}
	}
	if b.cfg.get("selftest", "") == "1" {
		err := selftest(b.cfg)
		if err != nil {
			logf("devid-board: SELFTEST FAIL %v", err)
		} else {
			logf("devid-board: SELFTEST OK")
		}
		b.shutdown()
	}
	b.superviseAgent()
}

func mountBase() {
	for _, m := range []struct {
		src, dst, typ string
		flags         uintptr
		data          string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "ptmxmode=0666"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, m.flags, m.data); err != nil {
			logf("mount %s: %v", m.dst, err)
		}
	}
}

// mountFlash mounts the ext4 flash and binds its etc/devid and state
// directories where the agent expects them. ext4's journal replays any write
// a power cut interrupted; the agent's own files are written atomically.
func (b *board) mountFlash(dev string) error {
	if err := waitFor(dev, 5*time.Second); err != nil {
		return err
	}
	_ = os.MkdirAll("/flash", 0o755)
	if err := unix.Mount(dev, "/flash", "ext4", unix.MS_NOATIME|unix.MS_NODEV|unix.MS_NOSUID, "errors=remount-ro"); err != nil {
		return fmt.Errorf("mount %s on /flash: %w", dev, err)
	}
	b.flashMnt = true
	for _, bind := range [][2]string{{"/flash/etc/devid", "/etc/devid"}, {"/flash/state", "/var/lib/devid"}} {
		mode := os.FileMode(0o755)
		if bind[1] == "/var/lib/devid" {
			mode = 0o700
		}
		if err := os.MkdirAll(bind[0], mode); err != nil {
			return err
		}
		_ = os.MkdirAll(bind[1], mode)
		if err := unix.Mount(bind[0], bind[1], "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", bind[0], bind[1], err)
		}
	}
	logf("flash: %s mounted; /etc/devid and /var/lib/devid bound", dev)
	return nil
}

func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reap collects every exited child, so that nothing stays a zombie, and
// reports the agent's exit. It is the only caller of wait4.
func (b *board) reap() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGCHLD)
	for range sig {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			b.mu.Lock()
			isAgent := pid == b.agentPid
			if isAgent {
				b.agentPid = 0
			}
			b.mu.Unlock()
			if isAgent {
				b.agentExit <- ws.ExitStatus()
				if ws.Signaled() {
					logf("agent: killed by %v", ws.Signal())
				}
			}
		}
	}
}

func (b *board) startAgent(args []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	bin := "/bin/devid-agent"
	pid, err := syscall.ForkExec(bin, append([]string{bin}, args...), &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=/bin", "HOME=/var/lib/devid", "TZ=UTC"},
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	b.agentPid = pid
	logf("devid-board: agent started pid %d: %s %s", pid, bin, strings.Join(args, " "))
	return nil
}

func (b *board) superviseAgent() {
	args := strings.Split(b.cfg.get("args", "run,--config,/etc/devid/config.toml"), ",")
	onExit := b.cfg.get("exit", "restart")
	backoff := time.Second
	for {
		if err := b.startAgent(args); err != nil {
			b.fatal("start agent: %v", err)
		}
		select {
		case <-b.ctlPoweroff:
			b.shutdown()
		case code := <-b.agentExit:
			logf("devid-board: agent exited status %d", code)
			if onExit == "poweroff" {
				b.shutdown()
			}
			// Like systemd Restart=on-failure with a capped backoff.
			select {
			case <-b.ctlPoweroff:
				b.shutdown()
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
		}
	}
}

// shutdown stops the agent, flushes the flash and powers off. It does not return.
func (b *board) shutdown() {
	b.mu.Lock()
	pid := b.agentPid
	b.mu.Unlock()
	if pid > 0 {
		logf("devid-board: stopping agent pid %d", pid)
		_ = unix.Kill(pid, unix.SIGTERM)
		select {
		case <-b.agentExit:
		case <-time.After(10 * time.Second):
			logf("agent ignored SIGTERM for 10s; SIGKILL")
			_ = unix.Kill(pid, unix.SIGKILL)
			select {
			case <-b.agentExit:
			case <-time.After(2 * time.Second):
			}
		}
	}
	unix.Sync()
	if b.flashMnt {
		for _, m := range []string{"/var/lib/devid", "/etc/devid", "/flash"} {
			if err := unix.Unmount(m, 0); err != nil {
				logf("unmount %s: %v", m, err)
			}
		}
	}
	powerOff()
}

func (b *board) controlCommand(f *os.File, cmd string) {
	switch cmd {
	case "poweroff":
		logf("devid-board: control: poweroff requested")
		fmt.Fprintln(f, "ok poweroff")
		select {
		case b.ctlPoweroff <- struct{}{}:
		default:
		}
	case "status":
		b.mu.Lock()
		fmt.Fprintf(f, "ok agent_pid=%d\n", b.agentPid)
		b.mu.Unlock()
	case "rss":
		// The agent's resident memory, for the footprint figures.
		b.mu.Lock()
		pid := b.agentPid
		b.mu.Unlock()
		fields, err := rssFields(pid)
		if err != nil {
			fmt.Fprintf(f, "error %v\n", err)
			return
		}
		fmt.Fprintf(f, "ok agent_%s\n", fields)
	case "usb-unplug", "usb-plug":
		// The board's USB cable (usbrelay_linux.go).
		msg, err := usbCable(cmd == "usb-plug")
		if err != nil {
			fmt.Fprintf(f, "error %v\n", err)
			return
		}
		logf("devid-board: control: usb cable %s", msg)
		fmt.Fprintf(f, "ok %s\n", msg)
	case "usb-host":
		fmt.Fprintf(f, "ok %s\n", usbHostDevices())
	case "":
	default:
		if args, ok := strings.CutPrefix(cmd, "floor "); ok {
			// floor ADDR HUB DEVICE: the footprint baseline (floor_linux.go).
			a := strings.Fields(args)
			if len(a) != 3 {
				fmt.Fprintf(f, "error floor wants ADDR HUB DEVICE, got %q\n", args)
				return
			}
			fields, err := floorRSS(a[0], a[1], a[2])
			if err != nil {
				fmt.Fprintf(f, "error %v\n", err)
				return
			}
			fmt.Fprintf(f, "ok %s\n", fields)
			return
		}
		fmt.Fprintf(f, "error unknown command %q\n", cmd)
	}
}

// kernelUptime returns the first field of /proc/uptime (seconds since the
// kernel started), or "?" when it cannot be read.
func kernelUptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	return up
}

// procStatus reads the named "kB" fields of /proc/PID/status.
func procStatus(pid int, keys ...string) (map[string]int, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("agent not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	return parseStatus(string(b), keys...)
}

func powerOff() {
	unix.Sync()
	logf("devid-board: power off")
	// The vTPM bridge goroutine keeps answering until here: the kernel's
	// TPM2_Shutdown at power-off would otherwise wait for its timeouts.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {} // not reached; PID 1 must never return
}

// findVirtioPort returns /dev/vportNpM for the virtio-serial port with this
// name. There is no udev, so /dev/virtio-ports/NAME does not exist.
func findVirtioPort(name string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, _ := os.ReadFile(m)
			if strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(m))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q within %v", name, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *board) startControl(name string) error {
	dev, err := findVirtioPort(name, 5*time.Second)
	if err != nil {
		return err
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), dev) // blocking: a dedicated thread reads it
	go func() {
		var line []byte
		buf := make([]byte, 256)
		for {
			n, err := f.Read(buf)
			if n == 0 || err != nil {
				// virtio-serial reads return 0 while no host end is
				// connected; wait for the harness to connect.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			line = append(line, buf[:n]...)
			for {
				i := bytes.IndexByte(line, '\n')
				if i < 0 {
					break
				}
				b.controlCommand(f, strings.TrimSpace(string(line[:i])))
				line = line[i+1:]
			}
			if len(line) > 1024 {
				line = line[:0] // no command is that long; drop the noise
			}
		}
	}()
	logf("control: listening on %s", dev)
	return nil
}
