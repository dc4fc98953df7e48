// Command devid-jig is the factory test jig: it runs the local CA and
// programs boards over the factory serial bus.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "devid-jig: not implemented yet")
	os.Exit(1)
}
