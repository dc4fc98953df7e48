//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "boardinit runs only as /init of a Linux initramfs")
	os.Exit(1)
}
