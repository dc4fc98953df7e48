package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// flashBoard is one scenario's board before its first boot: the
// simulator and factory CA of its line, and its boot spec, whose flash is
// written.
type flashBoard struct {
	sim     *sim
	caDir   string
	rootPEM []byte
	spec    boardSpec // with the guest's forwards to the simulator
}

// newFlashBoard makes the scenario's fresh directory under o.work, starts
// its line (devid-sim and the factory CA), writes the flash with
// factoryPort as factory.port ("" for none) and picks the board's MAC.
// The caller stops fb.sim.
func newFlashBoard(ctx context.Context, o options, env map[string]string, name, factoryPort string) (*flashBoard, error) {
	dir, err := filepath.Abs(filepath.Join(o.work, name))
	if err != nil {
		return nil, err
	}
	if err := freshDir(dir); err != nil {
		return nil, err
	}
	for _, bin := range []string{o.simBin, o.jigBin} {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("need %s: %w", bin, err)
		}
	}
	s, caDir, rootPEM, err := startLine(ctx, o, dir, "qemu-board-line")
	if err != nil {
		return nil, err
	}
	if o.floorBin != "" {
		err = writeFloor(ctx, filepath.Join(dir, "flash-src"), o.floorBin, caDir)
	}
	var forwards map[string]string
	if err == nil {
		forwards, err = prepareFlash(dir, s, rootPEM, factoryPort)
	}
	if err == nil {
		var mac string
		if mac, err = boardMAC(); err == nil {
			return &flashBoard{sim: s, caDir: caDir, rootPEM: rootPEM, spec: boardSpec{
				Arch: o.arch, Kernel: env["KERNEL"], Initrd: env["INITRD"], Dir: dir,
				Forwards: forwards, MAC: mac, Timeout: 4 * time.Minute,
			}}, nil
		}
	}
	s.stop()
	return nil, err
}

// checkProgrammed checks what the jig reports of a programmed board: a
// chain that verifies to the factory root, and the key in the TPM.
func checkProgrammed(res *jigResult, rootPEM []byte) error {
	if err := checkChain(res, rootPEM); err != nil {
		return err
	}
	if res.KeyBackend != "tpm" {
		return fmt.Errorf("the board made its key in backend %q, want tpm", res.KeyBackend)
	}
	return nil
}

// factoryBoot is the board's first boot, at the factory: the jig programs
// it (see program), the chain must verify and the key be in the TPM, and
// the board is powered off.
func factoryBoot(ctx context.Context, o options, spec boardSpec, caDir string, rootPEM []byte) (*jigResult, error) {
	b, err := startBoard(ctx, spec, 1, logf)
	if err != nil {
		return nil, err
	}
	defer b.kill()
	res, err := program(ctx, o, caDir, b)
	if err != nil {
		return nil, err
	}
	if err := checkProgrammed(res, rootPEM); err != nil {
		return nil, err
	}
	logf("factory: programmed device %s over the %s (key in %s, serial %s); powering off", res.DeviceID, busName(spec.FactoryBus), res.KeyBackend, res.Serial)
	return res, b.powerOff(ctx)
}

// busName names a factory bus in the harness's output.
func busName(bus string) string {
	switch bus {
	case "ftdi":
		return "usb-ftdi"
	case "gadget":
		return "usb-gadget"
	}
	return "uart"
}

// program runs devid-jig against the board twice: the first run loses its
// cable in the middle of INSTALL, the second must finish the job.
func program(ctx context.Context, o options, caDir string, b *board) (*jigResult, error) {
	dir := b.spec.Dir
	// The operator starts the jig once the board is up: wait until the
	// agent says it serves the factory bus (the console only times the
	// step; the jig's own HELLO is the check). Bytes sent to a 16550 that
	// no driver has opened yet are lost, as on hardware. On the USB
	// adapter the board has no port until the cable is in: plug it first.
	var link *uartLink
	if b.spec.FactoryBus == "ftdi" {
		l, err := openUART(ctx, dir)
		if err != nil {
			return nil, err
		}
		link = l
	}
	if _, err := b.waitLine(ctx, `serving factory bus`, 2*time.Minute); err != nil {
		return nil, err
	}
	if link == nil {
		l, err := openUART(ctx, dir)
		if err != nil {
			return nil, err
		}
		link = l
	}
	bus := busName(b.spec.FactoryBus)
	cut := link.cutAfter("INSTALL DATA", 1)
	if b.spec.FactoryBus == "gadget" {
		// The cable between the board's USB port and the host is inside
		// the board: pull it there (the gadget's UDC unbound).
		link.cutWith(func() {
			if ans, err := b.control(ctx, "usb-unplug"); err != nil || !strings.HasPrefix(ans, "ok") {
				logf("factory: usb-unplug: %q %v", ans, err)
			}
		})
	}
	out, err := runJig(ctx, o.jigBin, link.portPath(), caDir, tpmMakerRoot(dir), cut)
	link.close()
	select {
	case <-cut:
		logf("factory: %s cut during INSTALL at +%.1fs; jig: %v", bus, b.since().Seconds(), firstLine(err, out))
	default:
		return nil, fmt.Errorf("the jig finished before the cable was cut (err %v): the cut test did not happen\n%s", err, out)
	}
	if b.spec.FactoryBus == "gadget" {
		if ans, err := b.control(ctx, "usb-plug"); err != nil || !strings.HasPrefix(ans, "ok") {
			return nil, fmt.Errorf("usb-plug: %q %v", ans, err)
		}
	}
	// A new cable, a new jig run.
	link2, err := openUART(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer link2.close()
	// Never half: the cut came before INSTALL COMMIT, so the board must
	// report that it holds no certificate, not a partial one.
	st, err := jigStatus(ctx, o.jigBin, link2.portPath())
	if err != nil {
		return nil, err
	}
	if !strings.Contains(st, "state blank") && !strings.Contains(st, "state keyed") {
		return nil, fmt.Errorf("after the cut the board says %q; want state blank or keyed", st)
	}
	logf("factory: after the cut the board reports: %s", st)
	out, err = runJig(ctx, o.jigBin, link2.portPath(), caDir, tpmMakerRoot(dir), nil)
	if err != nil {
		return nil, fmt.Errorf("devid-jig program after reconnecting: %v\n%s\nconsole: %s", err, out, b.tail(10))
	}
	var res jigResult
	if err := json.Unmarshal(lastJSON(out), &res); err != nil {
		return nil, fmt.Errorf("devid-jig --json output: %v\n%s", err, out)
	}
	logf("factory: programmed in %d ms after reconnecting (board up %.1fs); %s", res.ElapsedMs, b.since().Seconds(), attestLine(out))
	fmt.Printf("qemu-test: factory-programming %s %d ms (%s board, devid-jig elapsed, key in the TPM, attestation required)\n", bus, res.ElapsedMs, b.spec.Arch)
	programmingMS = append(programmingMS, fmt.Sprintf("%s %d ms", bus, res.ElapsedMs))
	return &res, nil
}
