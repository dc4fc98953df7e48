// Command devid-sim runs the Azure DPS, IoT Hub and CA simulator.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "devid-sim: not implemented yet")
	os.Exit(1)
}
