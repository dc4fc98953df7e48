package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"devid/simulator/simproc"
)

type options struct {
	simBin           string
	simArgs          string
	devices          int
	regWorkers       int
	connWorkers      int
	sources          int
	phaseTimeout     time.Duration
	hold             time.Duration
	honourRetryAfter bool
}

// sim is a running devid-sim process.
type sim struct {
	*simproc.Proc
	ready simproc.Ready
	roots *x509.CertPool
}

func startSim(bin, extra, stateDir string) (*sim, error) {
	args := []string{"serve", "--state", stateDir}
	if extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	p, err := simproc.Start(context.Background(), bin, args, simproc.Options{})
	if err != nil {
		return nil, err
	}
	s := &sim{Proc: p, ready: p.Ready}
	if len(s.ready.Hubs) == 0 {
		s.stop()
		return nil, fmt.Errorf("ready line lists no hub")
	}
	b, err := os.ReadFile(s.ready.ServerCA)
	if err != nil {
		s.stop()
		return nil, err
	}
	s.roots = x509.NewCertPool()
	s.roots.AppendCertsFromPEM(b)
	return s, nil
}

func (s *sim) stop() { s.Proc.Stop() }

// memKB reads VmRSS and VmHWM (kB) of pid.
func memKB(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		var v int64
		fmt.Sscan(f[1], &v)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// cpuTime is the user+system CPU time pid has used.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after ')'.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// selfCPU is the CPU time this (client) process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// device is one simulated device identity.
type device struct {
	cn       string
	cert     tls.Certificate
	hub      string // assigned hub host, after registration
	deviceID string
}

func makeDevices(n int, caCert *x509.Certificate, caKey *ecdsa.PrivateKey) ([]*device, error) {
	devs := make([]*device, n)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	work := make(chan int)
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				d, err := makeLeaf(fmt.Sprintf("bench-%06d", i), caCert, caKey)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				devs[i] = d
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if e, _ := firstErr.Load().(error); e != nil {
		return nil, e
	}
	return devs, nil
}

func makeCA() (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "devid bench device CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), err
}

func makeLeaf(cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*device, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	return &device{cn: cn, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}, nil
}

// latencies summarises durations.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func run(o options, w io.Writer) error {
	if o.devices <= 0 {
		return errors.New("-devices must be positive")
	}
	raiseNoFile()
	loadAvg := "n/a"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			loadAvg = strings.Join(f[:3], " ")
		}
	}
	state, err := os.MkdirTemp("", "devid-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	s, err := startSim(o.simBin, o.simArgs, filepath.Join(state, "sim"))
	if err != nil {
		return err
	}
	defer s.stop()
	pid := s.Cmd.Process.Pid
	idleRSS, _ := memKB(pid)

	caCert, caKey, caPEM, err := makeCA()
	if err != nil {
		return err
	}
	if err := enrollGroup(s.ready.ControlURL, "bench", caPEM); err != nil {
		return fmt.Errorf("enroll group: %w", err)
	}
	t0 := time.Now()
	devs, err := makeDevices(o.devices, caCert, caKey)
	if err != nil {
		return err
	}
	certTime := time.Since(t0)

	fmt.Fprintf(os.Stderr, "bench: registering %d devices (%d in flight, bound %s)\n", len(devs), o.regWorkers, o.phaseTimeout)
	cpu0, self0 := cpuTime(pid), selfCPU()
	ctx, cancel := context.WithTimeout(context.Background(), o.phaseTimeout)
	reg := registerAll(ctx, s, devs, o)
	cancel()
	regCPU, regSelf := cpuTime(pid)-cpu0, selfCPU()-self0
	_, regHWM := memKB(pid)

	fmt.Fprintf(os.Stderr, "bench: %d registered in %s; connecting them to their hubs\n", reg.ok, reg.wall.Round(time.Millisecond))
	cpu0, self0 = cpuTime(pid), selfCPU()
	ctx, cancel = context.WithTimeout(context.Background(), o.phaseTimeout)
	conn := connectAll(ctx, s, devs, o)
	cancel()
	connCPU, connSelf := cpuTime(pid)-cpu0, selfCPU()-self0
	heldRSS, _ := memKB(pid)
	if o.hold > 0 {
		time.Sleep(o.hold) // let the simulator settle before the second reading; not an assertion
	}
	heldRSS2, connHWM := memKB(pid)
	if heldRSS2 > heldRSS {
		heldRSS = heldRSS2
	}
	fmt.Fprintf(os.Stderr, "bench: %d connections held (%d failed) in %s\n", conn.held, conn.failed, conn.wall.Round(time.Millisecond))
	still := conn.closeAll()

	title := "default devid-sim flags"
	if o.simArgs != "" {
		title = "devid-sim " + o.simArgs
	}
	fmt.Fprintf(w, "## devid-sim load (simulator/bench; %s)\n\n", title)
	fmt.Fprintf(w, "Command: `go run ./simulator/bench -sim %s -devices %d -reg-workers %d -conn-workers %d`", o.simBin, o.devices, o.regWorkers, o.connWorkers)
	if !o.honourRetryAfter {
		fmt.Fprintf(w, " `-honour-retry-after=false`")
	}
	if o.simArgs != "" {
		fmt.Fprintf(w, " `-sim-args '%s'`", o.simArgs)
	}
	fmt.Fprintf(w, "  \nMachine: %d CPUs, %s/%s, %s, load average at start %s (the load generator shares the CPUs). Loopback only; every device has its own ECDSA P-256 leaf (no TLS session reuse).\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), loadAvg)
	fmt.Fprintf(w, "| measure | value | goal |\n|---|---|---|\n")
	fmt.Fprintf(w, "| device certificates made (not timed below) | %d in %s | |\n", len(devs), certTime.Round(time.Millisecond))
	fmt.Fprintf(w, "| DPS registrations assigned | %d of %d (%d failed, %d not started before the bound) | |\n", reg.ok, o.devices, reg.failed, reg.notStarted)
	fmt.Fprintf(w, "| registration wall time | %s | |\n", reg.wall.Round(time.Millisecond))
	fmt.Fprintf(w, "| **registrations/s** | **%.0f** | ≥ 1,000 |\n", rate(reg.ok, reg.wall))
	fmt.Fprintf(w, "| devid-sim CPU during registrations | %s (%.1f ms per registration; %.0f%% of one core) | |\n", regCPU.Round(10*time.Millisecond),
		float64(regCPU)/float64(time.Millisecond)/float64(max(reg.ok, 1)), 100*float64(regCPU)/float64(max(reg.wall, 1)))
	if regCPU > 0 && reg.ok > 0 {
		fmt.Fprintf(w, "| devid-sim registrations per CPU-second (derived: 1 / CPU per registration) | %.0f | |\n", float64(reg.ok)/regCPU.Seconds())
	}
	fmt.Fprintf(w, "| load-generator CPU during registrations (same machine) | %s (%.0f%% of one core) | |\n", regSelf.Round(10*time.Millisecond), 100*float64(regSelf)/float64(max(reg.wall, 1)))
	fmt.Fprintf(w, "| registration latency p50 / p99 | %s / %s | |\n", reg.lat.pct(0.5).Round(time.Millisecond), reg.lat.pct(0.99).Round(time.Millisecond))
	fmt.Fprintf(w, "| polls per registration (mean) / retry-after honoured | %.2f / %v | |\n", float64(reg.polls)/float64(max(reg.ok, 1)), o.honourRetryAfter)
	if reg.ok > 0 {
		var parts []string
		for i, n := range phaseNames {
			parts = append(parts, fmt.Sprintf("%s %s", n, (time.Duration(phaseNanos[i].Load())/time.Duration(reg.ok)).Round(time.Millisecond)))
		}
		fmt.Fprintf(w, "| mean time per registration step | %s | |\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "| **concurrent hub connections held** | **%d** of %d (%d refused/failed) | 10,000 |\n", conn.held, reg.ok, conn.failed)
	fmt.Fprintf(w, "| connect wall time / rate | %s / %.0f per s | |\n", conn.wall.Round(time.Millisecond), rate(conn.held, conn.wall))
	fmt.Fprintf(w, "| devid-sim CPU during connects | %s (%.1f ms per connection) | |\n", connCPU.Round(10*time.Millisecond),
		float64(connCPU)/float64(time.Millisecond)/float64(max(conn.held, 1)))
	fmt.Fprintf(w, "| load-generator CPU during connects | %s | |\n", connSelf.Round(10*time.Millisecond))
	fmt.Fprintf(w, "| TLS+CONNECT latency p50 / p99 | %s / %s | |\n", conn.lat.pct(0.5).Round(time.Millisecond), conn.lat.pct(0.99).Round(time.Millisecond))
	fmt.Fprintf(w, "| connections still open after hold | %d | |\n", still)
	fmt.Fprintf(w, "| devid-sim VmRSS idle / after registrations (VmHWM) | %s / %s | |\n", mib(idleRSS), mib(regHWM))
	fmt.Fprintf(w, "| **devid-sim VmRSS with all connections held** | **%s** (VmHWM %s) | < 2 GiB |\n", mib(heldRSS), mib(connHWM))
	if conn.held > 0 {
		fmt.Fprintf(w, "| RSS per held connection | %.1f KiB | |\n", float64(heldRSS-idleRSS)/float64(conn.held))
	}
	if len(reg.errs) > 0 || len(conn.errs) > 0 {
		fmt.Fprintf(w, "\nFirst errors: %s\n", strings.Join(append(reg.errs, conn.errs...), "; "))
	}
	fmt.Fprintln(w)
	return nil
}

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func mib(kb int64) string {
	if kb < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f MiB", float64(kb)/1024)
}

func raiseNoFile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}
