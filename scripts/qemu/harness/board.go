package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"devid/hal/tpm/tpmtest"
)

// boardSpec says how to boot one board. Disk and TPM state live in Dir and
// persist across boots, as flash and TPM NV do on hardware.
type boardSpec struct {
	Arch     string // arm64 or armv7
	Kernel   string
	Initrd   string
	Dir      string            // per-board state: flash.img, tpm/, sockets, console logs
	Forwards map[string]string // guest "10.0.2.100:8883" -> host "127.0.0.1:P" (slirp guestfwd)
	MAC      string            // eth0's MAC; the board's device ID falls back to it
	Cmdline  []string          // extra devid.* keys
	Timeout  time.Duration     // the harness kills QEMU after this
	// RootDisk and DataDisk make a disk board (the Debian board): the
	// root filesystem on /dev/vda, the data partition on /dev/vdb, and no
	// flash disk.
	RootDisk, DataDisk string
	MemMB              int
	// FactoryBus is how the jig's cable reaches the board: "" is a PCI
	// 16550 UART (the board's /dev/ttyS0); "ftdi" is QEMU's FTDI USB
	// serial adapter on an xHCI controller (the board's /dev/ttyUSB0).
	// Either way the host end is the socket uart.sock. The adapter is
	// attached while a client is connected to that socket and detached
	// when it leaves, as a USB cable plugged and pulled. "gadget" is the
	// board's own USB device port (the agent's gadget on dummy_hcd): the
	// board relays the host side of it, /dev/ttyACM*, to uart.sock over
	// virtio-serial (boardinit's devid.usbrelay).
	FactoryBus string
}

// board is one boot: a swtpm process and a QEMU process. A power cycle is a
// new board on the same spec.
type board struct {
	spec    boardSpec
	boot    int
	started time.Time
	qemu    *exec.Cmd
	swtpm   *exec.Cmd
	exited  chan struct{}
	exitErr error

	mu      sync.Mutex
	lines   []string
	arrived []time.Duration // when each line arrived, from QEMU's start
	waiters []*lineWaiter
	logf    func(format string, args ...any)
}

type lineWaiter struct {
	re *regexp.Regexp
	ch chan string
}

func qemuArgs(s boardSpec) (bin string, args []string) {
	append_ := "panic=1 loglevel=4 " + strings.Join(s.Cmdline, " ")
	if s.FactoryBus != "" {
		append_ += " devid.usb=1" // init loads the USB stack
	}
	switch s.Arch {
	case "armv7":
		bin = "qemu-system-arm"
		// highmem=off: the non-LPAE armmp kernel cannot reach the high PCIe ECAM window.
		args = []string{"-M", "virt,highmem=off", "-cpu", "cortex-a15"}
	default:
		bin = "qemu-system-aarch64"
		args = []string{"-M", "virt", "-cpu", "cortex-a53"}
	}
	append_ = "console=ttyAMA0 " + append_
	net := "user,id=n0,restrict=on"
	for guest, host := range s.Forwards {
		net += ",guestfwd=tcp:" + guest + "-cmd:socat - TCP:" + host
	}
	mem := "256"
	if s.MemMB > 0 {
		mem = fmt.Sprint(s.MemMB)
	}
	disks := []string{"-drive", "file=" + filepath.Join(s.Dir, "flash.img") + ",format=raw,if=none,id=flash,cache=writeback",
		"-device", "virtio-blk-pci,drive=flash"}
	if s.RootDisk != "" {
		disks = []string{"-drive", "file=" + s.RootDisk + ",format=raw,if=none,id=root,cache=unsafe",
			"-device", "virtio-blk-pci,drive=root",
			"-drive", "file=" + s.DataDisk + ",format=raw,if=none,id=data,cache=writeback",
			"-device", "virtio-blk-pci,drive=data"}
	}
	args = append(args,
		"-m", mem, "-smp", "1", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot", "-kernel", s.Kernel, "-initrd", s.Initrd, "-append", append_,
		"-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile="+macOpt(s.MAC),
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=tpmd,path="+filepath.Join(s.Dir, "swtpm-data.sock"),
		"-device", "virtserialport,chardev=tpmd,name=swtpm",
		"-chardev", "socket,id=ctl,path="+filepath.Join(s.Dir, "ctl.sock")+",server=on,wait=off",
		"-device", "virtserialport,chardev=ctl,name=devid.ctl",
		"-chardev", "socket,id=fac,path="+filepath.Join(s.Dir, "uart.sock")+",server=on,wait=off",
	)
	switch s.FactoryBus {
	case "ftdi":
		args = append(args, "-device", "qemu-xhci,id=xhci", "-device", "usb-serial,chardev=fac,bus=xhci.0")
	case "gadget":
		args = append(args, "-device", "virtserialport,chardev=fac,name=devid.factory")
	default:
		args = append(args, "-device", "pci-serial,chardev=fac")
	}
	return bin, append(args, disks...)
}

func macOpt(mac string) string {
	if mac == "" {
		return ""
	}
	return ",mac=" + mac
}

// manufactureTPM makes the TPM's NV state once, with an EK certificate
// from a TPM maker CA of its own, as a TPM vendor does. The maker's root
// is tpmMakerRoot(dir): the jig's TPM roots for key attestation
// (docs/attestation.md).
func manufactureTPM(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "tpm"), 0o700); err != nil {
		return err
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		return err
	}
	makerDir := filepath.Join(dir, "tpm-maker")
	if err := os.MkdirAll(makerDir, 0o700); err != nil {
		return err
	}
	maker, err := tpmtest.WriteMaker(makerDir, "devid QEMU board TPM maker", localca, 30*24*time.Hour)
	if err != nil {
		return fmt.Errorf("TPM maker CA: %w", err)
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", filepath.Join(dir, "tpm"), "--config", maker.SetupConfig(),
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--overwrite").CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %v\n%s", err, out)
	}
	return nil
}

// tpmMakerRoot is the PEM root of the maker CA that manufactureTPM(dir)
// issued the board TPM's EK certificates from.
func tpmMakerRoot(dir string) string { return filepath.Join(dir, "tpm-maker", "root.pem") }

// makeFlash formats the flash disk with the given tree as its content.
func makeFlash(dir, content string, sizeMB int) error {
	img := filepath.Join(dir, "flash.img")
	_ = os.Remove(img)
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "devid-flash", "-E", "root_owner=0:0",
		"-d", content, img, fmt.Sprintf("%dM", sizeMB)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %v\n%s", err, out)
	}
	return nil
}

// fsckFlash checks the flash filesystem read-only: after a power cut and a
// clean boot it must be consistent.
func fsckFlash(dir string) error {
	out, err := exec.Command("e2fsck", "-f", "-n", filepath.Join(dir, "flash.img")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("e2fsck -fn flash.img: %v\n%s", err, out)
	}
	return nil
}

func startBoard(ctx context.Context, s boardSpec, boot int, logf func(string, ...any)) (*board, error) {
	b := &board{spec: s, boot: boot, exited: make(chan struct{}), logf: logf}
	for _, f := range []string{"swtpm-data.sock", "swtpm-ctrl.sock", "ctl.sock", "uart.sock"} {
		_ = os.Remove(filepath.Join(s.Dir, f))
	}
	// A fresh swtpm process per boot is the TPM's power cycle; its NV state
	// (keys, EK certificate) stays in tpm/.
	b.swtpm = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+filepath.Join(s.Dir, "tpm"),
		"--server", "type=unixio,path="+filepath.Join(s.Dir, "swtpm-data.sock"),
		"--ctrl", "type=unixio,path="+filepath.Join(s.Dir, "swtpm-ctrl.sock"),
		"--flags", "not-need-init", "--locality", "allow-set-locality",
		"--log", fmt.Sprintf("file=%s,level=1", filepath.Join(s.Dir, fmt.Sprintf("swtpm-boot%d.log", boot))))
	b.swtpm.SysProcAttr = childAttr()
	if err := b.swtpm.Start(); err != nil {
		return nil, fmt.Errorf("swtpm: %w", err)
	}
	if err := waitSocket(ctx, filepath.Join(s.Dir, "swtpm-data.sock")); err != nil {
		b.kill()
		return nil, fmt.Errorf("swtpm data socket: %w", err)
	}
	bin, args := qemuArgs(s)
	b.qemu = exec.Command(bin, args...)
	b.qemu.SysProcAttr = childAttr()
	b.qemu.Stdin = nil
	stdout, err := b.qemu.StdoutPipe()
	if err != nil {
		b.kill()
		return nil, err
	}
	b.qemu.Stderr = b.qemu.Stdout
	logFile, err := os.Create(filepath.Join(s.Dir, fmt.Sprintf("console-boot%d.log", boot)))
	if err != nil {
		b.kill()
		return nil, err
	}
	b.started = time.Now()
	if err := b.qemu.Start(); err != nil {
		logFile.Close()
		b.kill()
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		defer logFile.Close()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			fmt.Fprintf(logFile, "[host +%7.3fs] %s\n", time.Since(b.started).Seconds(), line)
			b.addLine(line)
		}
	}()
	go func() {
		<-consoleDone
		b.exitErr = b.qemu.Wait()
		if b.swtpm.Process != nil {
			_ = syscall.Kill(-b.swtpm.Process.Pid, syscall.SIGTERM)
			_ = b.swtpm.Wait()
		}
		close(b.exited)
	}()
	// The harness timeout: QEMU never outlives it.
	go func() {
		select {
		case <-b.exited:
		case <-time.After(s.Timeout):
			logf("boot %d: timeout %v: killing QEMU", boot, s.Timeout)
			b.kill()
		case <-ctx.Done():
			b.kill()
		}
	}()
	return b, nil
}

func (b *board) addLine(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, line)
	b.arrived = append(b.arrived, b.since())
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if w.re.MatchString(line) {
			w.ch <- line
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
}

// waitLine waits for a console line matching re (including lines already
// seen), for the board to exit, or for the deadline.
func (b *board) waitLine(ctx context.Context, re string, d time.Duration) (string, error) {
	w := &lineWaiter{re: regexp.MustCompile(re), ch: make(chan string, 1)}
	b.mu.Lock()
	for _, l := range b.lines {
		if w.re.MatchString(l) {
			b.mu.Unlock()
			return l, nil
		}
	}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case l := <-w.ch:
		return l, nil
	case <-b.exited:
		select {
		case l := <-w.ch:
			return l, nil
		default:
		}
		return "", fmt.Errorf("boot %d: board powered off before console showed /%s/ (last lines: %s)", b.boot, re, b.tail(8))
	case <-t.C:
		return "", fmt.Errorf("boot %d: console did not show /%s/ within %v (last lines: %s)", b.boot, re, d, b.tail(8))
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (b *board) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := max(0, len(b.lines)-n)
	return strings.Join(b.lines[from:], " | ")
}

// find returns the first submatch of re in the console so far and when
// its line arrived, or "?" and -1.
func (b *board) find(re string) (string, time.Duration) {
	rx := regexp.MustCompile(re)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, l := range b.lines {
		if m := rx.FindStringSubmatch(l); m != nil {
			return m[1], b.arrived[i]
		}
	}
	return "?", -1
}

func (b *board) since() time.Duration { return time.Since(b.started) }

// kill is the power cut: QEMU and swtpm die at once, without any flush in the guest.
func (b *board) kill() {
	for _, c := range []*exec.Cmd{b.qemu, b.swtpm} {
		if c != nil && c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	}
}

// waitExit waits for QEMU to exit (it exits on the guest's power-off, thanks
// to -no-reboot) and reports whether it did so within d.
func (b *board) waitExit(d time.Duration) error {
	select {
	case <-b.exited:
		return nil
	case <-time.After(d):
		b.kill()
		<-b.exited
		return fmt.Errorf("boot %d: QEMU still running %v after the request; killed", b.boot, d)
	}
}

// control sends one command on the board's control port and returns its answer.
func (b *board) control(ctx context.Context, cmd string) (string, error) {
	return b.controlWithin(ctx, cmd, 20*time.Second)
}

// controlWithin is control for a command that may take up to d.
func (b *board) controlWithin(ctx context.Context, cmd string, d time.Duration) (string, error) {
	conn, err := dialUnix(ctx, filepath.Join(b.spec.Dir, "ctl.sock"))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprintf(conn, "%s\n", cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("control %q: %w", cmd, err)
	}
	return strings.TrimSpace(line), nil
}

// powerOff asks the board's init to stop the agent and power off cleanly.
func (b *board) powerOff(ctx context.Context) error {
	if _, err := b.waitLine(ctx, `control: listening`, 60*time.Second); err != nil {
		return err
	}
	if ans, err := b.control(ctx, "poweroff"); err != nil || !strings.HasPrefix(ans, "ok") {
		return fmt.Errorf("poweroff: %q %v", ans, err)
	}
	return b.waitExit(60 * time.Second)
}

// dialUnix connects to a socket QEMU or swtpm creates once it runs.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	var c net.Conn
	err := pollCtx(ctx, 20*time.Second, func() (bool, error) {
		var err error
		c, err = d.DialContext(ctx, "unix", path)
		return err == nil, err
	}, func(last error) error { return last })
	if err != nil {
		if c != nil {
			c.Close() // connected just as ctx ended
		}
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return c, nil
}

func waitSocket(ctx context.Context, path string) error {
	return pollCtx(ctx, 10*time.Second, func() (bool, error) {
		st, err := os.Stat(path)
		return err == nil && st.Mode()&os.ModeSocket != 0, nil
	}, func(error) error { return errors.New("timed out") })
}

// echoServer is a loopback TCP echo server that counts what it echoed.
type echoServer struct {
	ln    net.Listener
	mu    sync.Mutex
	bytes int
}

func startEcho() (*echoServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &echoServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						c.Write(buf[:n])
						e.mu.Lock()
						e.bytes += n
						e.mu.Unlock()
					}
					if err != nil {
						if !errors.Is(err, io.EOF) {
							return
						}
						return
					}
				}
			}()
		}
	}()
	return e, nil
}

func (e *echoServer) echoed() int { e.mu.Lock(); defer e.mu.Unlock(); return e.bytes }
