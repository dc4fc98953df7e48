package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loadModules loads each module listed (one path a line, already in
// dependency order) with finit_module. Debian's modules are signed; the
// kernel is not in lockdown, so this needs no modprobe.
func loadModules(list string) error {
	data, err := os.ReadFile(list)
	if err != nil {
		return err
	}
	t0 := time.Now()
	n := 0
	for _, p := range strings.Fields(string(data)) {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		flags := 0
		if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") {
			flags = unix.MODULE_INIT_COMPRESSED_FILE
		}
		err = unix.FinitModule(int(f.Fd()), "", flags)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("finit_module %s: %w", p, err)
		}
		n++
	}
	logf("modules: %d loaded in %.3fs", n, time.Since(t0).Seconds())
	return nil
}
