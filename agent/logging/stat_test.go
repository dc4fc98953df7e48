package logging

import (
	"os"
	"strconv"
	"syscall"
	"testing"
)

func statOf(t *testing.T, f *os.File) [2]uint64 {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint64{uint64(st.Dev), st.Ino}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
