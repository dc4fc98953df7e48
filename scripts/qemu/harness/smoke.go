package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// smoke boots the board in self-test mode and checks each interface from the
// host side: the echo server saw the guest's bytes, the UART answered every
// PING, and the guest's TPM GetRandom went through the bridge to swtpm.
func smoke(ctx context.Context, o options, env map[string]string) error {
	dir := filepath.Join(o.work, "smoke")
	if err := freshDir(dir); err != nil {
		return err
	}
	if err := manufactureTPM(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "flash-src/etc/devid"), 0o755); err != nil {
		return err
	}
	if err := makeFlash(dir, filepath.Join(dir, "flash-src"), 16); err != nil {
		return err
	}
	echo, err := startEcho()
	if err != nil {
		return err
	}
	defer echo.ln.Close()
	_, port, _ := strings.Cut(echo.ln.Addr().String(), ":")
	spec := boardSpec{
		Arch: o.arch, Kernel: env["KERNEL"], Initrd: env["INITRD"], Dir: dir,
		Forwards: map[string]string{"10.0.2.100:7": echo.ln.Addr().String(), "10.0.2.101:7": echo.ln.Addr().String()},
		Cmdline: []string{"devid.selftest=1", "devid.echo=10.0.2.100:7,10.0.2.101:7", "devid.uart=/dev/ttyS0",
			"devid.blocked=10.0.2.2:" + port},
		Timeout: 90 * time.Second,
	}
	b, err := startBoard(ctx, spec, 1, logf)
	if err != nil {
		return err
	}
	defer b.kill()
	// The UART: the host end is QEMU's unix socket behind the 16550.
	conn, err := dialUnix(ctx, filepath.Join(dir, "uart.sock"))
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(conn)
	expect := func(prefix string) (string, error) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", fmt.Errorf("uart: waiting for %q: %w", prefix, err)
			}
			if line = strings.TrimSpace(line); strings.HasPrefix(line, prefix) {
				return line, nil
			}
		}
	}
	if _, err := expect("READY"); err != nil {
		return err
	}
	logf("smoke: uart READY at +%.2fs after QEMU start", b.since().Seconds())
	const pings = 5
	for i := 1; i <= pings; i++ {
		fmt.Fprintf(conn, "PING %d\n", i)
		if _, err := expect(fmt.Sprintf("PONG %d", i)); err != nil {
			return err
		}
	}
	fmt.Fprintf(conn, "QUIT\n")
	if _, err := expect(fmt.Sprintf("BYE %d", pings)); err != nil {
		return err
	}
	line, err := b.waitLine(ctx, `devid-board: SELFTEST (OK|FAIL)`, 60*time.Second)
	if err != nil {
		return err
	}
	if err := b.waitExit(30 * time.Second); err != nil {
		return err
	}
	logf("smoke: QEMU exited at +%.2fs", b.since().Seconds())
	if !strings.Contains(line, "OK") {
		return fmt.Errorf("board: %s", line)
	}
	if echo.echoed() == 0 {
		return fmt.Errorf("the echo server saw no bytes from the guest")
	}
	for _, re := range []string{`GetRandom ok`, `EK certificate present`} {
		if _, err := b.waitLine(ctx, re, time.Second); err != nil {
			return err
		}
	}
	return nil
}
