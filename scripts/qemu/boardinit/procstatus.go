package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseStatus returns the named fields of a /proc/PID/status text, each a
// "NAME:   N kB" line, in KiB. A field that is missing or not a number is
// an error that names it.
func parseStatus(text string, keys ...string) (map[string]int, error) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	out := make(map[string]int, len(keys))
	for line := range strings.SplitSeq(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !want[k] {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return nil, fmt.Errorf("/proc status field %s: %q is not \"N kB\"", k, strings.TrimSpace(v))
		}
		n, err := strconv.Atoi(f[0])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("/proc status field %s: %q is not a size", k, f[0])
		}
		out[k] = n
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("/proc status has no %s field", k)
		}
	}
	return out, nil
}
