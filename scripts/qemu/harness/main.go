// Command harness runs the emulated devid board under QEMU and judges it.
//
// It plays everything outside the board: the TPM chip (swtpm, manufactured
// with an EK certificate), the factory jig on the 16550 UART, the flash disk,
// the power switch, and the cloud (devid-sim, reached only through slirp
// guestfwd). Scenarios:
//
//	smoke  the board alone: TPM through the vTPM bridge, UART lines, network echo, clean power-off
//	flow   factory programming over the UART (with the link cut mid-transfer),
//	       power cycle, DPS registration (with a power cut while registering),
//	       hub connection and telemetry, judged from the simulator's records
//	debian the systemd board (Debian 12, the devid-agent .deb): boot, factory
//	       through the service, watchdog, journal, upgrade, data partition,
//	       in one boot, one verdict line each (debian.go)
//	usb-adapter  factory programming through QEMU's FTDI USB serial adapter
//	       (/dev/ttyUSB0 on the board), the adapter detached mid-INSTALL (usb.go)
//	usb-gadget   factory programming through the board's own USB device port:
//	       the agent's CDC ACM gadget on dummy_hcd, its USB serial number
//	       checked from the host side, the cable pulled mid-INSTALL (usb.go)
//
// It prints one line per step, a summary "qemu-test: N passed, N failed",
// and exits non-zero on any failure. Console logs stay in the work directory.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type options struct {
	arch     string
	imageEnv string
	work     string
	simBin   string
	jigBin   string
	timeout  time.Duration
	floorBin string // the board's build of scripts/bench.d/mqttfloor: measure it too (make bench)
}

var t0 = time.Now()

func logf(format string, args ...any) {
	fmt.Printf("qemu-test +%6.1fs %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	var o options
	flag.StringVar(&o.arch, "arch", "arm64", "board: arm64 or armv7")
	flag.StringVar(&o.imageEnv, "image", "", "image.env written by scripts/qemu/image.sh (default .build/qemu/ARCH/image.env)")
	flag.StringVar(&o.work, "work", "", "work directory, emptied first (default .build/qemu/run-ARCH)")
	flag.StringVar(&o.simBin, "sim", ".build/bin/devid-sim", "host devid-sim binary")
	flag.StringVar(&o.jigBin, "jig", ".build/bin/devid-jig", "host devid-jig binary")
	flag.DurationVar(&o.timeout, "timeout", 6*time.Minute, "bound for the whole run")
	flag.StringVar(&o.floorBin, "floor", "", "the board's build of scripts/bench.d/mqttfloor: flow also measures its RSS on the board (make bench)")
	scenarios := flag.String("scenarios", "smoke,flow", "comma-separated scenarios to run")
	flag.Parse()
	if o.imageEnv == "" {
		o.imageEnv = filepath.Join(".build/qemu", o.arch, "image.env")
	}
	if o.work == "" {
		o.work = filepath.Join(".build/qemu", "run-"+o.arch)
	}
	env, err := readEnv(o.imageEnv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v (run scripts/qemu/image.sh first)\n", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	for _, name := range strings.Split(*scenarios, ",") {
		name = strings.TrimSpace(name)
		run, ok := map[string]func(context.Context, options, map[string]string) error{
			"smoke":       smoke,
			"flow":        flow,
			"debian":      debian,
			"usb-adapter": usbAdapter,
			"usb-gadget":  usbGadget,
		}[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "harness: unknown scenario %q\n", name)
			os.Exit(2)
		}
		start := time.Now()
		logf("=== %s (%s board, kernel %s)", name, o.arch, env["KERNEL_VERSION"])
		report(name, start, run(ctx, o, env))
	}
	if len(programmingMS) > 1 {
		fmt.Printf("qemu-test: factory-programming by bus on the %s board: %s\n", o.arch, strings.Join(programmingMS, ", "))
	}
	fmt.Printf("qemu-test: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

var passed, failed int

// programmingMS is each programming run's time, "BUS N ms", in scenario
// order: the buses side by side on one board.
var programmingMS []string

// report prints one scenario's (or one step's) verdict and its time.
func report(name string, start time.Time, err error) {
	if err != nil {
		failed++
		logf("--- FAIL %s (%.1fs): %v", name, time.Since(start).Seconds(), err)
	} else {
		passed++
		logf("--- PASS %s (%.1fs)", name, time.Since(start).Seconds())
	}
}

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	for _, k := range []string{"KERNEL", "INITRD"} {
		if env[k] == "" {
			return nil, fmt.Errorf("%s: no %s", path, k)
		}
	}
	return env, sc.Err()
}

func freshDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.MkdirAll(dir, 0o700)
}
