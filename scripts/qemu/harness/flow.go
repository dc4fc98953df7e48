package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"devid/agent/config"
	"devid/enroll/attest"
	"devid/hal/tpm"

	"github.com/google/go-tpm/tpm2"
)

// Guest-side addresses of the cloud. slirp (restrict=on) forwards exactly
// these, each to the simulator's loopback port; nothing else is reachable.
const (
	guestDPS     = "10.0.2.100:8883"
	guestHubBase = 101 // hub i is 10.0.2.(101+i):8883 (guestHubAddr)
)

type jigResult struct {
	DeviceID   string `json:"device_id"`
	Serial     string `json:"serial"`
	ChainPEM   string `json:"chain_pem"`
	KeyBackend string `json:"key_backend"`
	ElapsedMs  int64  `json:"elapsed_ms"`
	// Attestation is the TPM key attestation outcome ("attested"), and
	// EKSHA256 the fingerprint of the EK certificate it checked.
	Attestation string `json:"attestation"`
	EKSHA256    string `json:"ek_sha256"`
}

// flow is the board's life: factory programming over the UART (the cable is
// pulled mid-transfer once), power cycle, a power cut while it registers with
// DPS, and a boot that must still reach its hub and deliver telemetry.
func flow(ctx context.Context, o options, env map[string]string) error {
	fb, err := newFlashBoard(ctx, o, env, "flow", "/dev/ttyS0")
	if err != nil {
		return err
	}
	defer fb.sim.stop()
	s, caDir, rootPEM, dir, spec := fb.sim, fb.caDir, fb.rootPEM, fb.spec.Dir, fb.spec
	logf("flow: devid-sim up: scope %s, dps %s (%s), %d hub(s)", s.ready.IDScope, s.ready.DPS.Host, s.ready.DPS.Addr, len(s.ready.Hubs))

	// Boot 1: the factory. The jig's bench has no route to the cloud.
	factorySpec := spec
	factorySpec.Forwards = nil
	res, err := factoryBoot(ctx, o, factorySpec, caDir, rootPEM)
	if err != nil {
		return err
	}
	deviceID := res.DeviceID

	// Boot 2: in the field; power is cut while the agent is registering.
	// DPS holds its answer, so "registering" lasts until the cut.
	faultID, err := s.addFault(ctx, map[string]any{"scope": "dps", "ops": []string{"register"}, "delayMs": 120000})
	if err != nil {
		return err
	}
	b2, err := startBoard(ctx, spec, 2, logf)
	if err != nil {
		return err
	}
	defer b2.kill()
	err = poll(ctx, 2*time.Minute, "boot 2: agent connected to DPS", func() (bool, error) {
		cs, err := s.connections(ctx)
		for _, c := range cs {
			if c.Endpoint == "dps" && strings.EqualFold(c.ID, deviceID) {
				return true, err
			}
		}
		return false, err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b2.tail(6))
	}
	// Cut once the register request has reached DPS (the held reply counts
	// as an application of the fault); a simulator that does not count
	// delays leaves only "connected to DPS", which is also mid-registration.
	arrived := poll(ctx, 5*time.Second, "register request held by DPS", func() (bool, error) {
		n, err := s.faultApplied(ctx, faultID)
		return n > 0, err
	}) == nil
	logf("flow: boot 2: agent registering at +%.1fs (register request held by DPS: %v); cutting power", b2.since().Seconds(), arrived)
	b2.kill()
	_ = b2.waitExit(30 * time.Second)
	if err := s.clearFaults(ctx); err != nil {
		return err
	}

	// Boot 3: it must still get there.
	b3, err := startBoard(ctx, spec, 3, logf)
	if err != nil {
		return err
	}
	defer b3.kill()
	var assigned *registration
	err = poll(ctx, 3*time.Minute, "boot 3: DPS registration assigned", func() (bool, error) {
		r, err := s.registration(ctx, deviceID)
		assigned = r
		return r != nil && r.Status == "assigned", err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b3.tail(6))
	}
	tAssigned := b3.since()
	// The credential DPS saw is the one the factory issued, read back from
	// flash. (Group registrations carry no certificateInfo on real DPS, and
	// may not here; then the group match above is the evidence.)
	if got, want := assigned.X509.CertificateInfo.SHA256Thumbprint, leafSHA256(res); got != "" && !strings.EqualFold(got, want) {
		return fmt.Errorf("DPS saw leaf certificate sha256 %q, the jig issued %q", got, want)
	}
	if assigned.X509.EnrollmentGroupID != "qemu-board-line" {
		return fmt.Errorf("DPS matched enrollment group %q, want qemu-board-line", assigned.X509.EnrollmentGroupID)
	}
	var dev *hubDevice
	err = poll(ctx, 2*time.Minute, "boot 3: device connected to its hub", func() (bool, error) {
		d, err := s.device(ctx, assigned.AssignedHub, assigned.DeviceID)
		dev = d
		return d != nil && strings.EqualFold(d.ConnectionState, "Connected"), err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b3.tail(6))
	}
	tConnected := b3.since()
	var recs []telemetryRecord
	err = poll(ctx, 2*time.Minute, "boot 3: telemetry recorded by the hub", func() (bool, error) {
		r, err := s.telemetry(ctx, assigned.DeviceID, 5*time.Second)
		recs = r
		return len(r) > 0, err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b3.tail(6))
	}
	tTelemetry := b3.since()
	logf("flow: boot 3: assigned to %s at +%.1fs, connected at +%.1fs, first telemetry at +%.1fs (%d record(s), device %s %s)",
		assigned.AssignedHub, tAssigned.Seconds(), tConnected.Seconds(), tTelemetry.Seconds(), len(recs), dev.DeviceID, dev.Status)
	fmt.Printf("qemu-test: boot-to-connected %.1fs (QEMU start to the hub recording the device connected, %s board)\n", tConnected.Seconds(), o.arch)
	if err := b3.powerOff(ctx); err != nil {
		return err
	}
	if err := fsckFlash(dir); err != nil {
		return err
	}
	if err := checkStateDir(dir); err != nil {
		return err
	}
	if err := checkTPMKey(dir, res); err != nil {
		return err
	}
	logf("flow: flash filesystem clean after the power cut and a clean power-off")
	return cachedBoot(ctx, o, s, spec, assigned, logf)
}

// cachedBoot is boot 4: the board powers on with its assignment cached and
// must reach its hub without DPS. It measures boot-to-connected from QEMU's
// start with the breakdown the console gives, and the agent's resident
// memory once it has been connected and idle for a few seconds.
func cachedBoot(ctx context.Context, o options, s *sim, spec boardSpec, assigned *registration, logf func(string, ...any)) error {
	err := poll(ctx, 30*time.Second, "boot 4: hub records the device disconnected after the power-off", func() (bool, error) {
		d, err := s.device(ctx, assigned.AssignedHub, assigned.DeviceID)
		return d != nil && !strings.EqualFold(d.ConnectionState, "Connected"), err
	})
	if err != nil {
		return err
	}
	b4, err := startBoard(ctx, spec, 4, logf)
	if err != nil {
		return err
	}
	defer b4.kill()
	err = poll(ctx, 2*time.Minute, "boot 4: device connected to its hub", func() (bool, error) {
		d, err := s.device(ctx, assigned.AssignedHub, assigned.DeviceID)
		return d != nil && strings.EqualFold(d.ConnectionState, "Connected"), err
	})
	if err != nil {
		return fmt.Errorf("%w (console: %s)", err, b4.tail(6))
	}
	tConnected := b4.since()
	r, err := s.registration(ctx, assigned.RegistrationID)
	if err != nil {
		return err
	}
	if r == nil || r.Etag != assigned.Etag || r.LastUpdated != assigned.LastUpdated {
		return fmt.Errorf("boot 4: the agent registered with DPS again (registration %+v, was etag %s); the cached assignment was not used", r, assigned.Etag)
	}
	// The breakdown, from the board's console: when init's first line
	// arrived (less init's own clock: QEMU start to init), the kernel's
	// uptime then, and init's clock when it started the agent.
	initClock, initAt := b4.find(`\[board \+([0-9.]+)s\] devid-board: init started`)
	kernel, _ := b4.find(`init started at kernel uptime ([0-9.]+)s`)
	agentStart, _ := b4.find(`\[board \+([0-9.]+)s\] devid-board: agent started`)
	// Not seen on the console: "?" (the bench then reports it missing),
	// not a made-up figure.
	toInit := "?"
	if ic, err := strconv.ParseFloat(initClock, 64); err == nil && initAt >= 0 {
		toInit = fmt.Sprintf("%.2f", initAt.Seconds()-ic)
	}
	fmt.Printf("qemu-test: boot-to-connected-cached %.2fs (QEMU start to the hub recording the device connected, cached assignment, %s board; QEMU start to init %ss, of which kernel uptime %ss; agent started at init +%ss)\n",
		tConnected.Seconds(), spec.Arch, toInit, kernel, agentStart)
	// Connected and idle: the footprint figure (docs/benchmarks.md).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Second):
	}
	ans, err := b4.control(ctx, "rss")
	if err != nil || !strings.HasPrefix(ans, "ok ") {
		return fmt.Errorf("boot 4: rss: %q %v", ans, err)
	}
	fmt.Printf("qemu-test: agent-rss %s (%s board, connected and idle 5 s)\n", strings.TrimPrefix(ans, "ok "), spec.Arch)
	if o.floorBin != "" {
		floor, err := floorRSS(ctx, s, b4, assigned.AssignedHub)
		if err != nil {
			return fmt.Errorf("boot 4: %w", err)
		}
		fmt.Printf("qemu-test: floor-rss %s (baseline client on the %s board, connected and idle 5 s)\n", floor, spec.Arch)
	}
	return b4.powerOff(ctx)
}

// guestHubAddr is the address the guest dials for the simulator's hub i.
func guestHubAddr(i int) string { return fmt.Sprintf("10.0.2.%d:8883", guestHubBase+i) }

// prepareFlash writes the flash disk as the image builder ships it (config
// and trust anchors, no state) and manufactures the board's TPM. It returns
// the host forwards that stand in for the guest's routes to DPS and hubs.
func prepareFlash(dir string, s *sim, rootPEM []byte, factoryPort string) (map[string]string, error) {
	flashSrc := filepath.Join(dir, "flash-src")
	etc := filepath.Join(flashSrc, "etc/devid")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return nil, err
	}
	serverCA, err := os.ReadFile(s.ready.ServerCA)
	if err != nil {
		return nil, fmt.Errorf("sim server CA: %w", err)
	}
	forwards := map[string]string{guestDPS: s.ready.DPS.Addr}
	resolve := map[string]string{s.ready.DPS.Host: guestDPS}
	for i, h := range s.ready.Hubs {
		g := guestHubAddr(i)
		forwards[g] = h.Addr
		resolve[h.Host] = g
	}
	cfgText := boardConfig(s.ready.DPS.Host+":8883", s.ready.IDScope, resolve, factoryPort)
	if _, err := config.Parse([]byte(cfgText)); err != nil {
		return nil, fmt.Errorf("the board config the harness writes is invalid: %w\n%s", err, cfgText)
	}
	for name, data := range map[string][]byte{"config.toml": []byte(cfgText), "factory-root.pem": rootPEM, "service-root.pem": serverCA} {
		if err := os.WriteFile(filepath.Join(etc, name), data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := makeFlash(dir, flashSrc, 64); err != nil {
		return nil, err
	}
	if err := manufactureTPM(dir); err != nil {
		return nil, err
	}
	return forwards, nil
}

// startLine starts the cloud (devid-sim) and the factory CA (devid-jig ca
// init in dir/ca), and enrolls the CA as the DPS enrollment group.
func startLine(ctx context.Context, o options, dir, group string) (*sim, string, []byte, error) {
	s, err := startSim(ctx, o.simBin, filepath.Join(dir, "sim"))
	if err != nil {
		return nil, "", nil, err
	}
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.CommandContext(ctx, o.jigBin, "ca", "init", "--dir", caDir).CombinedOutput(); err != nil {
		s.stop()
		return nil, "", nil, fmt.Errorf("devid-jig ca init: %v\n%s", err, out)
	}
	rootPEM, err := os.ReadFile(filepath.Join(caDir, "root.pem"))
	if err == nil {
		err = s.enrollGroup(ctx, group, rootPEM)
	}
	if err != nil {
		s.stop()
		return nil, "", nil, err
	}
	return s, caDir, rootPEM, nil
}

// boardConfig is /etc/devid/config.toml as an image builder would ship it
// for this line, plus the resolve map that stands in for DNS.
func boardConfig(dpsEndpoint, scope string, resolve map[string]string, factoryPort string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\n\n[key]\nbackend = %q\n\n", "/var/lib/devid", "tpm:/dev/tpmrm0")
	if factoryPort == "" { // the board's own USB device port, as a gadget
		fmt.Fprintf(&b, "[factory]\nusb_gadget = true\nroot = %q\n\n", "/etc/devid/factory-root.pem")
	} else {
		fmt.Fprintf(&b, "[factory]\nport = %q\nbaud = 115200\nroot = %q\n\n", factoryPort, "/etc/devid/factory-root.pem")
	}
	fmt.Fprintf(&b, "[dps]\nendpoint = %q\nid_scope = %q\ntrust_bundle = %q\n\n", dpsEndpoint, scope, "/etc/devid/service-root.pem")
	fmt.Fprintf(&b, "[network.resolve]\n")
	for h, a := range resolve {
		fmt.Fprintf(&b, "%q = %q\n", h, a)
	}
	return b.String()
}

// boardMAC is a locally administered MAC, unique per run: the board's
// device ID falls back to its first MAC, and no two boards share one.
func boardMAC() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2]), nil
}

// runJig programs the board with attestation required: the jig trusts
// the EK certificates of tpmRoots (the board TPM's maker) only.
func runJig(ctx context.Context, bin, port, caDir, tpmRoots string, cut <-chan struct{}) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.Command(bin, "program", "--port", port, "--ca-dir", caDir, "--station", "qemu-harness", "--json",
		"--tpm-roots", tpmRoots, "--require-attestation")
	cmd.SysProcAttr = childAttr()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var cutSeen <-chan time.Time
	for {
		select {
		case err := <-done:
			return buf.Bytes(), err
		case <-cut:
			cut = nil
			// The jig is left to notice the lost line itself; if it has
			// not given up after 30 s, it is stopped like an operator would.
			cutSeen = time.After(30 * time.Second)
		case <-cutSeen:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return buf.Bytes(), errors.Join(errors.New("jig still running 30s after the cut; killed"), <-done)
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return buf.Bytes(), fmt.Errorf("devid-jig program: %w", ctx.Err())
		}
	}
}

func jigStatus(ctx context.Context, bin, port string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "status", "--port", port).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("devid-jig status: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

func firstLine(err error, out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return fmt.Sprintf("%v; last output %q", err, lines[len(lines)-1])
}

func lastJSON(out []byte) []byte {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(strings.TrimSpace(lines[i]), "{") {
			return []byte(lines[i])
		}
	}
	return nil
}

// checkChain verifies, outside the board, what the jig installed: the leaf
// names the device and chains to the factory root.
func leafSHA256(res *jigResult) string {
	blk, _ := pem.Decode([]byte(res.ChainPEM))
	if blk == nil {
		return ""
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:])
}

func checkChain(res *jigResult, rootPEM []byte) error {
	var certs []*x509.Certificate
	rest := []byte(res.ChainPEM)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("jig chain: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return errors.New("jig printed no certificate chain")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return errors.New("factory root.pem holds no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("device chain does not verify to the factory root: %w", err)
	}
	if !strings.EqualFold(certs[0].Subject.CommonName, res.DeviceID) {
		return fmt.Errorf("leaf CN %q is not the device ID %q", certs[0].Subject.CommonName, res.DeviceID)
	}
	// Attestation was required: the key was proven to be in the board's
	// TPM, and the DevID certificate names that TPM (802.1AR).
	if res.Attestation != "attested" || res.EKSHA256 == "" {
		return fmt.Errorf("jig result: attestation %q, EK %q; want attested", res.Attestation, res.EKSHA256)
	}
	if _, _, ok, err := attest.ParseHardwareModuleName(certs[0]); err != nil || !ok {
		return fmt.Errorf("leaf has no HardwareModuleName in subjectAltName (%v)", err)
	}
	return nil
}

// checkStateDir reads the state directory's listing straight from the flash
// image: the directory is 0700 and every file in it 0600 (keys, key
// references, chains, caches alike), on the real filesystem the board used.
func checkStateDir(dir string) error {
	out, err := exec.Command("debugfs", "-R", "ls -l /state", filepath.Join(dir, "flash.img")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs ls /state: %v\n%s", err, out)
	}
	_ = os.WriteFile(filepath.Join(dir, "flash-state.txt"), out, 0o644)
	files := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] == "debugfs" {
			continue
		}
		mode, name := f[1], f[len(f)-1]
		switch {
		case name == "..":
		case strings.HasPrefix(mode, "40") && mode != "40700":
			return fmt.Errorf("state directory entry %s has mode %s, want 40700 (see %s)", name, mode, filepath.Join(dir, "flash-state.txt"))
		case strings.HasPrefix(mode, "100") && mode != "100600":
			return fmt.Errorf("state file %s has mode %s, want 100600", name, mode)
		case strings.HasPrefix(mode, "100"):
			files++
		}
	}
	if files == 0 {
		return fmt.Errorf("the state directory on flash holds no files:\n%s", out)
	}
	return nil
}

// checkTPMKey proves from outside the board that the certified key lives in
// the TPM: the key file on flash is a TSS2 key blob (public area plus
// private part wrapped by the TPM's storage key), its public area says
// fixedTPM, fixedParent and sensitiveDataOrigin (made inside this TPM, never
// exportable), and its ECC point is the public key in the factory
// certificate.
func checkTPMKey(dir string, res *jigResult) error {
	out, err := exec.Command("debugfs", "-R", "cat /state/device.tpmkey", filepath.Join(dir, "flash.img")).Output()
	if err != nil {
		return fmt.Errorf("debugfs cat /state/device.tpmkey: %w", err)
	}
	blob, err := tpm.ParseBlobPEM(out)
	if err != nil {
		return fmt.Errorf("/state/device.tpmkey on flash: %w", err)
	}
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](blob.Public)
	if err != nil {
		return fmt.Errorf("TPM key public area: %w", err)
	}
	pub, err := p2b.Contents()
	if err != nil {
		return fmt.Errorf("TPM key public area: %w", err)
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return fmt.Errorf("TPM key attributes fixedTPM=%v fixedParent=%v sensitiveDataOrigin=%v: the key could leave the TPM", a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return fmt.Errorf("TPM key is not ECC: %w", err)
	}
	blk, _ := pem.Decode([]byte(res.ChainPEM))
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	certKey, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("leaf key is %T, want ECDSA", leaf.PublicKey)
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return fmt.Errorf("TPM key parameters: %w", err)
	}
	tpmKey, err := tpm2.ECDSAPub(parms, pt)
	if err != nil {
		return fmt.Errorf("TPM key: %w", err)
	}
	if !tpmKey.Equal(certKey) {
		return errors.New("the certificate's public key is not the TPM key stored on flash")
	}
	logf("flow: the certified key is the TPM object on flash (fixedTPM, fixedParent, sensitiveDataOrigin)")
	return nil
}

// attestLine is the jig's progress line of the attestation step (its TPM
// time on the board), for the log.
func attestLine(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "] attest") {
			return strings.TrimSpace(l)
		}
	}
	return "no attest step in the jig output"
}
