// Command bench measures devid-sim under load from the outside: DPS
// registrations per second, then how many concurrent TLS device connections
// one hub holds and what the devid-sim process costs in memory
// (VmRSS/VmHWM from /proc/PID/status).
//
// It starts the real devid-sim binary on a temporary state directory,
// enrolls one X.509 group, registers -devices distinct devices over MQTT/TLS
// (each with its own ECDSA P-256 leaf, so no TLS session is reused), then
// connects them all to their hub and holds the connections. Every loop is
// bounded in count (-devices) and time (-phase-timeout); all traffic stays on
// loopback. The result is a markdown section on stdout, for scripts/bench.sh.
//
//	go run ./simulator/bench -sim .build/bin/devid-sim -devices 10000
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.simBin, "sim", ".build/bin/devid-sim", "devid-sim binary to run")
	flag.StringVar(&o.simArgs, "sim-args", "", "extra flags for devid-sim serve (space separated)")
	flag.IntVar(&o.devices, "devices", 10000, "devices to register and then hold connected")
	flag.IntVar(&o.regWorkers, "reg-workers", 512, "concurrent DPS registrations")
	flag.IntVar(&o.connWorkers, "conn-workers", 64, "concurrent hub connection attempts")
	flag.IntVar(&o.sources, "sources", 4, "loopback source addresses 127.0.0.(10..) to spread connections over")
	flag.DurationVar(&o.phaseTimeout, "phase-timeout", 3*time.Minute, "bound on each load phase")
	flag.DurationVar(&o.hold, "hold", 2*time.Second, "how long to hold all connections before reading RSS again")
	flag.BoolVar(&o.honourRetryAfter, "honour-retry-after", true, "wait the retry-after DPS sends before polling")
	flag.Parse()
	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
