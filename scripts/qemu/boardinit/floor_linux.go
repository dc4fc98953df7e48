package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The footprint baseline (make bench): the harness puts
// scripts/bench.d/mqttfloor and an identity of its own on the flash.
const (
	floorBin   = "/flash/bench/mqttfloor"
	floorKey   = "/flash/bench/floor.key"
	floorChain = "/flash/bench/floor-chain.pem"
	floorCA    = "/etc/devid/service-root.pem"
)

// floorRSS runs the baseline client connected to the hub at addr (TLS
// server name hub) as device, lets it idle as long as the agent was
// before its figure, and returns its memory figures in the "rss" answer's
// form. reap collects the process after it is killed.
func floorRSS(addr, hub, device string) (string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	pid, err := syscall.ForkExec(floorBin, []string{floorBin, "-addr", addr, "-hub", hub, "-device", device,
		"-ca", floorCA, "-cert", floorChain, "-key", floorKey}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=/bin", "TZ=UTC"},
		Files: []uintptr{0, w.Fd(), 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	w.Close()
	if err != nil {
		return "", fmt.Errorf("start %s: %w", floorBin, err)
	}
	defer unix.Kill(pid, unix.SIGKILL)
	connected := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		connected <- strings.TrimSpace(line) == "connected"
	}()
	select {
	case ok := <-connected:
		if !ok {
			return "", fmt.Errorf("%s exited before it connected (its errors are on the console)", floorBin)
		}
	case <-time.After(30 * time.Second):
		return "", fmt.Errorf("%s did not connect within 30s", floorBin)
	}
	time.Sleep(5 * time.Second)
	return rssFields(pid)
}

// rssFields is the memory part of the "rss" and "floor" answers.
func rssFields(pid int) (string, error) {
	// A binary in the initramfs (tmpfs) counts as shared memory, one on
	// the flash as file-backed.
	m, err := procStatus(pid, "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("pid=%d rss_kib=%d anon_kib=%d file_kib=%d shmem_kib=%d hwm_kib=%d",
		pid, m["VmRSS"], m["RssAnon"], m["RssFile"], m["RssShmem"], m["VmHWM"]), nil
}
