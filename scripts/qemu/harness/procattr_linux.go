package main

import "syscall"

// childAttr puts a child in its own process group (so a kill reaches its
// children too, e.g. QEMU's guestfwd socats) and kills it if the harness
// itself dies: no QEMU, swtpm or simulator outlives a killed harness.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
