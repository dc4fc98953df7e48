// Command devid-sim runs the Azure DPS, IoT Hub and CA simulator
// (`devid-sim serve`) and drives its control plane (every other verb, see
// verbs.go). See docs/simulator.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"devid/simulator"
)

var version = "dev"

const usage = `devid-sim: Azure IoT DPS + IoT Hub + CA simulator

Server:
  devid-sim serve --state DIR [flags]          run; prints one JSON ready line on stdout

Control (talk to a running simulator; --state DIR or --control URL):
  devid-sim ready                              print the ready line of the running simulator
  devid-sim enroll-group ID --ca FILE [--hub HOST]... [--policy P] [--disabled] [--twin JSON] [--no-reprovision|--reset-data]
  devid-sim enroll ID --cert FILE [--device-id ID] [--hub HOST]... [--policy P] [--disabled]
  devid-sim unenroll-group ID | unenroll ID
  devid-sim disable (group|enrollment|registration|device) ID [--hub NAME]
  devid-sim enable  (group|enrollment|registration|device) ID [--hub NAME]
  devid-sim registrations [GROUP]              list registration states
  devid-sim devices [--hub NAME]               list hub devices
  devid-sim delete-device ID [--hub NAME]
  devid-sim twin ID [--hub NAME] [--desired JSON]
  devid-sim method ID NAME [--payload JSON] [--timeout S] [--hub NAME]
  devid-sim c2d ID TEXT [--prop k=v]... [--hub NAME]
  devid-sim telemetry [--device ID] [--hub NAME] [--after N] [--wait 10s] [--min N]
  devid-sim revoke (--crl FILE [--chain FILE] | --cert FILE | --thumbprint HEX | --serial HEX | --device ID [--hub NAME])
  devid-sim fault add [--scope dps|hub] [--device ID] [--hub NAME] [--ops a,b] [--status N] [--retry-after N]
                      [--delay-ms N] [--drop-after K] [--refuse-seconds T] [--count N]
  devid-sim fault list | fault clear [ID]
  devid-sim connections
  devid-sim crl > issuing.crl
  devid-sim version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "version":
		fmt.Println(version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		err = control(os.Args[1], os.Args[2:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devid-sim:", err)
		os.Exit(1)
	}
}

// serve runs the simulator until SIGINT or SIGTERM. The ready line goes to
// stdout and to STATE/ready.json, where the control verbs find it.
func serve(args []string) error {
	cfg, err := simulator.ParseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	sim, err := simulator.Start(cfg)
	if err != nil {
		return err
	}
	line, err := sim.WriteReady(os.Getpid())
	if err != nil {
		sim.Close()
		return fmt.Errorf("write ready.json: %w", err)
	}
	fmt.Println(string(line))
	ready := sim.Ready()
	cfg.Logger.Info("devid-sim ready", "state", cfg.StateDir, "dps", ready.DPS.Addr, "control", ready.ControlURL)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return sim.Close()
}
