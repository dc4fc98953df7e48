package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// selftest proves the board's three interfaces without the agent: the TPM
// answers through the bridge, the factory UART carries lines both ways, and
// the network reaches the host through slirp.
func selftest(c cmdline) error {
	if c.get("vtpm", "swtpm") != "" {
		if err := tpmGetRandom("/dev/tpmrm0"); err != nil {
			return fmt.Errorf("tpm: %w", err)
		}
	}
	for _, addr := range strings.Split(c.get("echo", ""), ",") {
		if addr == "" {
			continue
		}
		if err := tcpEcho(addr); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	// slirp restrict=on: anything but the forwarded addresses is unreachable,
	// including the host itself at 10.0.2.2.
	for _, addr := range strings.Split(c.get("blocked", ""), ",") {
		if addr == "" {
			continue
		}
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err == nil {
			conn.Close()
			return fmt.Errorf("network: %s is reachable, but the board must reach only the forwarded services", addr)
		}
		logf("selftest: %s unreachable as it must be (%v)", addr, err)
	}
	if port := c.get("uart", ""); port != "" {
		if err := uartPing(port); err != nil {
			return fmt.Errorf("uart: %w", err)
		}
	}
	return nil
}

func tpmGetRandom(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	// TPM2_GetRandom(16): tag NO_SESSIONS, size 12, TPM_CC_GetRandom.
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16}
	t0 := time.Now()
	if _, err := f.Write(cmd); err != nil {
		return err
	}
	rsp := make([]byte, 64)
	n, err := f.Read(rsp)
	if err != nil {
		return err
	}
	if n < 12 {
		return fmt.Errorf("short GetRandom response (%d bytes)", n)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("GetRandom rc=%#x", rc)
	}
	logf("selftest: %s GetRandom ok (%x) in %.1fms", path, rsp[12:n], float64(time.Since(t0).Microseconds())/1000)
	// TPM2_NV_ReadPublic(0x01c00002): the RSA EK certificate index that
	// swtpm_setup --create-ek-cert writes, as a TPM vendor does.
	cmd = []byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x69, 0x01, 0xc0, 0x00, 0x02}
	if _, err := f.Write(cmd); err != nil {
		return err
	}
	rsp = make([]byte, 512)
	if n, err = f.Read(rsp); err != nil {
		return err
	}
	if n < 12 {
		return fmt.Errorf("short NV_ReadPublic response (%d bytes)", n)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("no EK certificate in NV (NV_ReadPublic 0x01c00002 rc=%#x): TPM not manufactured?", rc)
	}
	// TPM2B_NV_PUBLIC: size, nvIndex, nameAlg, attributes, authPolicy, dataSize.
	pub := rsp[10:n]
	if len(pub) >= 14 {
		policyLen := int(binary.BigEndian.Uint16(pub[12:14]))
		if off := 14 + policyLen; len(pub) >= off+2 {
			logf("selftest: EK certificate present in NV index 0x01c00002 (%d bytes)", binary.BigEndian.Uint16(pub[off:off+2]))
		}
	}
	return nil
}

func tcpEcho(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello from the devid board\n")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo from %s: got %q", addr, got)
	}
	logf("selftest: tcp echo via %s ok", addr)
	return nil
}

// uartPing answers the harness's "PING n" lines with "PONG n" until "QUIT",
// on a raw 115200 8N1 line, the way the factory bus is set up.
func uartPing(port string) error {
	fd, err := unix.Open(port, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), port)
	defer f.Close()
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("TCGETS (not a tty?): %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | unix.B115200
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("TCSETS: %w", err)
	}
	if _, err := fmt.Fprintf(f, "READY devid-board\n"); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			switch {
			case strings.HasPrefix(line, "PING "):
				n++
				fmt.Fprintf(f, "PONG %s\n", strings.TrimPrefix(line, "PING "))
			case line == "QUIT":
				fmt.Fprintf(f, "BYE %d\n", n)
				done <- nil
				return
			}
		}
		done <- fmt.Errorf("line closed: %v", sc.Err())
	}()
	select {
	case err := <-done:
		if err == nil {
			logf("selftest: uart %s ok", port)
		}
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no QUIT from the host within 30s")
	}
}
