package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// debian is the systemd board: Debian 12 on the root disk with the
// devid-agent .deb installed by dpkg, systemd as PID 1. One boot runs every
// step, each with its own verdict line:
//
//	boot      the unit is active (running) with the agent's own STATUS=
//	          text; systemd-analyze security's exposure is recorded
//	factory   the installed service serves the factory UART; the host jig
//	          programs the board (key in the TPM); the service goes on to
//	          DPS and the hub with no manual step
//	watchdog  SIGSTOP the agent: systemd kills and restarts it within two
//	          watchdog periods; it reconnects and delivers the messages
//	          queued before the stop
//	journal   the agent's warnings are under journalctl -p warning, with
//	          their fields and no second timestamp; systemctl reload
//	          applies a new log_level without a restart
//	upgrade   dpkg -i of a higher version restarts the service; config and
//	          state stay; the device does not register again
//	data      the state directory moves to the data partition (/data/devid)
//	          by config plus the documented drop-in; the agent keeps its
//	          identity there
func debian(ctx context.Context, o options, env map[string]string) error {
	dir, err := filepath.Abs(filepath.Join(o.work, "debian"))
	if err != nil {
		return err
	}
	if err := freshDir(dir); err != nil {
		return err
	}
	s, caDir, rootPEM, err := startLine(ctx, o, dir, "debian-board-line")
	if err != nil {
		return err
	}
	defer s.stop()
	// The image's config names the simulator by devid-sim's default names.
	rootfs := env["ROOTFS"]
	cfg, err := os.ReadFile(filepath.Join(rootfs, "etc/devid/config.toml"))
	if err != nil {
		return err
	}
	if len(s.ready.Hubs) == 0 || !strings.Contains(string(cfg), `"`+s.ready.DPS.Host+`" = "`+guestDPS+`"`) ||
		!strings.Contains(string(cfg), `"`+s.ready.Hubs[0].Host+`" = "10.0.2.101:8883"`) || !strings.Contains(string(cfg), s.ready.IDScope) {
		return fmt.Errorf("the image's /etc/devid/config.toml does not name this simulator (dps %s, hub %v, scope %s)", s.ready.DPS.Host, s.ready.Hubs, s.ready.IDScope)
	}
	serverCA, err := os.ReadFile(s.ready.ServerCA)
	if err != nil {
		return err
	}
	// The per-line trust anchors, as the image builder adds them.
	for name, b := range map[string][]byte{"factory-root.pem": rootPEM, "service-root.pem": serverCA} {
		if err := os.WriteFile(filepath.Join(rootfs, "etc/devid", name), b, 0o644); err != nil {
			return err
		}
	}
	t := time.Now()
	rootImg := filepath.Join(dir, "rootfs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "devid-root", "-d", rootfs, rootImg, "1G").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 root: %v\n%s", err, out)
	}
	dataSrc := filepath.Join(dir, "data-src")
	if err := os.MkdirAll(filepath.Join(dataSrc, "upgrade"), 0o755); err != nil {
		return err
	}
	upgradeDeb := env["UPGRADE_PACKAGE"]
	b, err := os.ReadFile(upgradeDeb)
	if err != nil {
		return fmt.Errorf("upgrade package: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dataSrc, "upgrade", filepath.Base(upgradeDeb)), b, 0o644); err != nil {
		return err
	}
	dataImg := filepath.Join(dir, "data.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "devid-data", "-E", "root_owner=0:0", "-d", dataSrc, dataImg, "64M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 data: %v\n%s", err, out)
	}
	if err := manufactureTPM(dir); err != nil {
		return err
	}
	mac, err := boardMAC()
	if err != nil {
		return err
	}
	logf("debian: disks and TPM ready in %.1fs", time.Since(t).Seconds())
	forwards := map[string]string{guestDPS: s.ready.DPS.Addr}
	for i, h := range s.ready.Hubs {
		forwards[guestHubAddr(i)] = h.Addr
	}
	spec := boardSpec{
		Arch: "arm64", Kernel: env["KERNEL"], Initrd: env["INITRD"], Dir: dir, Forwards: forwards, MAC: mac,
		Cmdline:  []string{"devid.root=/dev/vda", "net.ifnames=0", "systemd.show_status=auto"},
		RootDisk: rootImg, DataDisk: dataImg, MemMB: 512, Timeout: 12 * time.Minute,
	}
	bd, err := startBoard(ctx, spec, 1, logf)
	if err != nil {
		return err
	}
	defer bd.kill()
	g := &guest{b: bd}

	var deviceID string
	var reg *registration
	steps := []struct {
		name string
		run  func() error
	}{
		{"boot", func() error { return debianBoot(ctx, g) }},
		{"factory", func() error {
			var err error
			deviceID, reg, err = debianFactory(ctx, o, g, s, dir, caDir, rootPEM)
			return err
		}},
		{"watchdog", func() error { return debianWatchdog(ctx, g, s, deviceID, reg) }},
		{"journal", func() error { return debianJournal(ctx, g) }},
		{"upgrade", func() error { return debianUpgrade(ctx, g, s, deviceID, reg, filepath.Base(upgradeDeb)) }},
		{"data", func() error { return debianData(ctx, g, s, deviceID, reg) }},
	}
	var failedStep error
	for _, st := range steps {
		start := time.Now()
		if failedStep != nil {
			report("debian/"+st.name, start, fmt.Errorf("not run: an earlier step failed"))
			continue
		}
		err := st.run()
		report("debian/"+st.name, start, err)
		if err != nil {
			failedStep = err
			g.saveJournal(ctx, filepath.Join(dir, "journal.txt"))
		}
	}
	if failedStep == nil {
		g.saveJournal(ctx, filepath.Join(dir, "journal.txt"))
	}
	// A clean power-off through systemd: QEMU exits.
	_, _, _ = g.sh(ctx, "systemctl --no-block poweroff", 20*time.Second)
	if err := bd.waitExit(90 * time.Second); err != nil {
		return err
	}
	if failedStep != nil {
		return errors.New("a step failed (journal: " + filepath.Join(dir, "journal.txt") + ")")
	}
	return nil
}

// guest runs commands on the board through its control service.
type guest struct{ b *board }

// sh runs a shell command as root on the board and returns its exit code
// and output.
func (g *guest) sh(ctx context.Context, cmd string, d time.Duration) (int, string, error) {
	conn, err := dialUnix(ctx, filepath.Join(g.b.spec.Dir, "ctl.sock"))
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	// Every connection shares the one virtio port: an answer to a command
	// whose wait ran out arrives later, here. The ID tells them apart.
	id := strconv.FormatUint(controlSeq.Add(1), 10)
	if _, err := fmt.Fprintf(conn, "exec %s %s\n", id, base64.StdEncoding.EncodeToString([]byte(cmd))); err != nil {
		return 0, "", err
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, "", fmt.Errorf("board: %q: %w", cmd, err)
		}
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] != id && isDigits(f[1]) {
			continue // a late answer to an abandoned command
		}
		if len(f) < 3 || f[0] != "ok" {
			return 0, "", fmt.Errorf("board: %q: answer %q", cmd, strings.TrimSpace(line))
		}
		code, _ := strconv.Atoi(f[2])
		var out []byte
		if len(f) > 3 {
			out, _ = base64.StdEncoding.DecodeString(f[3])
		}
		return code, string(out), nil
	}
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// controlSeq numbers the commands sent to the board's control service.
var controlSeq atomic.Uint64

// must runs cmd and fails unless it exits 0.
func (g *guest) must(ctx context.Context, cmd string) (string, error) {
	code, out, err := g.sh(ctx, cmd, 2*time.Minute)
	if err == nil && code != 0 {
		err = fmt.Errorf("board: %q exited %d: %s", cmd, code, strings.TrimSpace(out))
	}
	return out, err
}

// dataMounted waits for the data partition. It is a nofail mount, so boot
// does not wait for it, and on a loaded host it can come up after the
// steps before upgrade (1 of 8 make test runs found /data empty).
func (g *guest) dataMounted(ctx context.Context) error {
	_, err := g.must(ctx, "for i in $(seq 60); do mountpoint -q /data && exit 0; sleep 1; done; "+
		"echo /data is not mounted after 60 s; systemctl status data.mount --no-pager 2>&1 | tail -20; exit 1")
	return err
}

// unit reads properties of devid-agent.service.
func (g *guest) unit(ctx context.Context, props ...string) (map[string]string, error) {
	out, err := g.must(ctx, "systemctl show devid-agent -p "+strings.Join(props, ","))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

func (g *guest) saveJournal(ctx context.Context, path string) {
	if _, out, err := g.sh(ctx, "journalctl -b --no-pager -o short-monotonic", time.Minute); err == nil {
		_ = os.WriteFile(path, []byte(out), 0o644)
	}
}

// waitConnected waits until the unit's status says connected.
func (g *guest) waitConnected(ctx context.Context, d time.Duration) (map[string]string, error) {
	var u map[string]string
	err := poll(ctx, d, "devid-agent STATUS= connected", func() (bool, error) {
		var err error
		u, err = g.unit(ctx, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
		return err == nil && u["ActiveState"] == "active" && strings.HasPrefix(u["StatusText"], "connected"), err
	})
	return u, err
}

var exposureRE = regexp.MustCompile(`Overall exposure level for devid-agent.service: ([0-9.]+) (\S+)`)

func debianBoot(ctx context.Context, g *guest) error {
	if err := poll(ctx, 3*time.Minute, "board control service answers", func() (bool, error) {
		code, _, err := g.sh(ctx, "true", 5*time.Second)
		return err == nil && code == 0, nil
	}); err != nil {
		return fmt.Errorf("%w (console: %s)", err, g.b.tail(8))
	}
	var u map[string]string
	err := poll(ctx, 3*time.Minute, "devid-agent active (running) with a STATUS= text", func() (bool, error) {
		var err error
		u, err = g.unit(ctx, "ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
		return err == nil && u["ActiveState"] == "active" && u["SubState"] == "running" && u["StatusText"] != "", err
	})
	if err != nil {
		return err
	}
	if u["Type"] != "notify" {
		return fmt.Errorf("unit Type=%s: active means nothing without READY=1", u["Type"])
	}
	logf("debian: boot: systemd reports devid-agent %s (%s), STATUS=%q at +%.1fs", u["ActiveState"], u["SubState"], u["StatusText"], g.b.since().Seconds())
	out, err := g.must(ctx, "systemd-analyze security devid-agent --no-pager")
	if err != nil {
		return err
	}
	_ = os.WriteFile(filepath.Join(g.b.spec.Dir, "systemd-analyze-security.txt"), []byte(out), 0o644)
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("systemd-analyze security printed no exposure level:\n%s", out)
	}
	fmt.Printf("qemu-test: systemd-analyze security devid-agent: exposure %s %s (goal <= 2.0)\n", m[1], m[2])
	return nil
}

func debianFactory(ctx context.Context, o options, g *guest, s *sim, dir, caDir string, rootPEM []byte) (string, *registration, error) {
	if err := poll(ctx, 2*time.Minute, "journal: serving factory bus", func() (bool, error) {
		code, _, err := g.sh(ctx, "journalctl -u devid-agent -o cat | grep -q 'serving factory bus'", 20*time.Second)
		return err == nil && code == 0, err
	}); err != nil {
		return "", nil, err
	}
	link, err := openUART(ctx, dir)
	if err != nil {
		return "", nil, err
	}
	defer link.close()
	out, err := runJig(ctx, o.jigBin, link.portPath(), caDir, tpmMakerRoot(dir), nil)
	if err != nil {
		return "", nil, fmt.Errorf("devid-jig program: %v\n%s", err, out)
	}
	var res jigResult
	if err := json.Unmarshal(lastJSON(out), &res); err != nil {
		return "", nil, fmt.Errorf("devid-jig --json output: %v\n%s", err, out)
	}
	logf("debian: factory: %s", attestLine(out))
	if err := checkChain(&res, rootPEM); err != nil {
		return "", nil, err
	}
	if res.KeyBackend != "tpm" {
		return "", nil, fmt.Errorf("the board made its key in backend %q, want tpm", res.KeyBackend)
	}
	logf("debian: factory: jig programmed %s (key in the TPM) in %d ms", res.DeviceID, res.ElapsedMs)
	var reg *registration
	if err := poll(ctx, 3*time.Minute, "DPS registration assigned", func() (bool, error) {
		r, err := s.registration(ctx, res.DeviceID)
		reg = r
		return r != nil && r.Status == "assigned", err
	}); err != nil {
		return "", nil, err
	}
	if err := poll(ctx, 2*time.Minute, "device connected to its hub", func() (bool, error) {
		d, err := s.device(ctx, reg.AssignedHub, reg.DeviceID)
		return d != nil && strings.EqualFold(d.ConnectionState, "Connected"), err
	}); err != nil {
		return "", nil, err
	}
	fmt.Printf("qemu-test: boot-to-connected under systemd %.1fs (QEMU start to the hub recording the device connected, factory programming included)\n", g.b.since().Seconds())
	u, err := g.waitConnected(ctx, time.Minute)
	if err != nil {
		return "", nil, err
	}
	logf("debian: factory: no manual step: STATUS=%q", u["StatusText"])
	return res.DeviceID, reg, nil
}

func debianWatchdog(ctx context.Context, g *guest, s *sim, deviceID string, reg *registration) error {
	// Hold the hub off so that messages stay in the agent's queue.
	fid, err := s.addFault(ctx, map[string]any{"scope": "hub", "deviceId": reg.DeviceID, "refuseSeconds": 600})
	if err != nil {
		return err
	}
	if err := poll(ctx, time.Minute, "agent sees the hub gone", func() (bool, error) {
		u, err := g.unit(ctx, "StatusText")
		return err == nil && !strings.HasPrefix(u["StatusText"], "connected"), err
	}); err != nil {
		return err
	}
	for i := 1; i <= 3; i++ {
		out, err := g.must(ctx, fmt.Sprintf(`printf '{"op":"send","body":"watchdog-%d"}\n' | socat -t 10 - UNIX-CONNECT:/run/devid/api.sock`, i))
		if err != nil {
			return err
		}
		if !strings.Contains(out, `"ok":true`) {
			return fmt.Errorf("local API send: %s", out)
		}
	}
	u, err := g.unit(ctx, "MainPID", "WatchdogUSec", "NRestarts")
	if err != nil {
		return err
	}
	wd, _ := time.ParseDuration(strings.ReplaceAll(u["WatchdogUSec"], " ", ""))
	if wd <= 0 {
		return fmt.Errorf("no watchdog configured (WatchdogUSec=%q)", u["WatchdogUSec"])
	}
	oldPID := u["MainPID"]
	watchdogLines := "journalctl -u devid-agent -o cat --no-pager | grep -c 'Watchdog timeout' || true"
	before, err := g.must(ctx, watchdogLines)
	if err != nil {
		return err
	}
	stopped := time.Now()
	if _, err := g.must(ctx, "kill -STOP "+oldPID); err != nil {
		return err
	}
	var restarted time.Duration
	// The restart time depends on how loaded the host is (the board is
	// emulated): it is reported, and the journal says whether the
	// watchdog, not something else, restarted the agent.
	if err := poll(ctx, max(3*wd, 2*time.Minute), "systemd restarts the stopped agent", func() (bool, error) {
		u, err := g.unit(ctx, "MainPID", "ActiveState", "SubState")
		ok := err == nil && u["MainPID"] != oldPID && u["MainPID"] != "0" && u["ActiveState"] == "active" && u["SubState"] == "running"
		if ok {
			restarted = time.Since(stopped)
		}
		return ok, err
	}); err != nil {
		return err
	}
	after, err := g.must(ctx, watchdogLines)
	if err != nil {
		return err
	}
	if strings.TrimSpace(after) == strings.TrimSpace(before) {
		return fmt.Errorf("the agent was restarted %.1fs after SIGSTOP, but the journal shows no watchdog timeout (%s before, %s after)",
			restarted.Seconds(), strings.TrimSpace(before), strings.TrimSpace(after))
	}
	logf("debian: watchdog: SIGSTOP pid %s; systemd's watchdog fired and a new agent ran after %.1fs (WatchdogSec=%v)", oldPID, restarted.Seconds(), wd)
	if _, err := s.call(ctx, "DELETE", "/sim/faults/"+fid, nil, nil); err != nil {
		return err
	}
	if _, err := g.waitConnected(ctx, 2*time.Minute); err != nil {
		return err
	}
	got := map[string]bool{}
	if err := poll(ctx, time.Minute, "the three queued messages at the hub", func() (bool, error) {
		recs, err := s.telemetry(ctx, reg.DeviceID, 5*time.Second)
		for _, r := range recs {
			if strings.HasPrefix(r.Body, "watchdog-") {
				got[r.Body] = true
			}
		}
		return len(got) == 3, err
	}); err != nil {
		return fmt.Errorf("%w (got %v)", err, got)
	}
	logf("debian: watchdog: back connected; the 3 messages queued before the stop reached the hub")
	return nil
}

func debianJournal(ctx context.Context, g *guest) error {
	out, err := g.must(ctx, "journalctl -p warning -u devid-agent -o json --output-fields=MESSAGE,PRIORITY,_COMM --no-pager")
	if err != nil {
		return err
	}
	warnings := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e struct {
			Message  any    `json:"MESSAGE"`
			Priority string `json:"PRIORITY"`
			Comm     string `json:"_COMM"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Comm != "devid-agent" {
			continue // systemd's own lines about the unit
		}
		msg, _ := e.Message.(string)
		if strings.Contains(msg, "level=INFO") || strings.Contains(msg, "level=DEBUG") {
			return fmt.Errorf("an info line at priority %s: %q", e.Priority, msg)
		}
		if strings.HasPrefix(msg, "<") || strings.Contains(msg, "time=") {
			return fmt.Errorf("journal line keeps its prefix or its own timestamp: %q", msg)
		}
		if strings.Contains(msg, "level=WARN") && e.Priority == "4" && strings.Contains(msg, "component=") {
			if warnings == 0 {
				logf("debian: journal: e.g. PRIORITY=4 %q", msg)
			}
			warnings++
		}
	}
	if warnings == 0 {
		return fmt.Errorf("no agent warning (PRIORITY=4, with fields) under journalctl -p warning -u devid-agent:\n%s", out)
	}
	logf("debian: journal: %d agent warnings at priority 4 with their fields", warnings)

	// systemctl reload: log_level applies without a restart.
	u, err := g.unit(ctx, "MainPID")
	if err != nil {
		return err
	}
	if _, err := g.must(ctx, `sed -i '1i log_level = "debug"' /etc/devid/config.toml && systemctl reload devid-agent`); err != nil {
		return err
	}
	err = poll(ctx, 30*time.Second, "reload applies log_level debug", func() (bool, error) {
		code, _, err := g.sh(ctx, "journalctl -u devid-agent -o cat | grep 'log level applied' | grep -q 'log_level=DEBUG'", 20*time.Second)
		return err == nil && code == 0, err
	})
	if err != nil {
		return err
	}
	after, err := g.unit(ctx, "MainPID")
	if err != nil {
		return err
	}
	if after["MainPID"] != u["MainPID"] {
		return fmt.Errorf("systemctl reload restarted the agent (pid %s -> %s)", u["MainPID"], after["MainPID"])
	}
	if _, err := g.must(ctx, `sed -i '1d' /etc/devid/config.toml && systemctl reload devid-agent`); err != nil {
		return err
	}
	logf("debian: journal: systemctl reload applied log_level debug in pid %s without a restart", u["MainPID"])
	return nil
}

// stateSum is a checksum of the config and the state files that make the
// identity.
const stateSum = "md5sum /etc/devid/config.toml $(awk -F'\"' '/^state_dir/{print $2}' /etc/devid/config.toml | grep . || echo /var/lib/devid)/*.pem 2>/dev/null | awk '{print $1}'"

func debianUpgrade(ctx context.Context, g *guest, s *sim, deviceID string, reg *registration, deb string) error {
	before, err := g.must(ctx, stateSum)
	if err != nil {
		return err
	}
	u, err := g.unit(ctx, "MainPID")
	if err != nil {
		return err
	}
	if err := g.dataMounted(ctx); err != nil {
		return err
	}
	out, err := g.must(ctx, "dpkg -i /data/upgrade/"+deb+" </dev/null 2>&1")
	if err != nil {
		return err
	}
	ver, err := g.must(ctx, "dpkg-query -W -f '${Version}' devid-agent")
	if err != nil {
		return err
	}
	if !strings.Contains(deb, "_"+ver+"_") {
		return fmt.Errorf("after dpkg -i %s the installed version is %q\n%s", deb, ver, out)
	}
	after, err := g.waitConnected(ctx, 2*time.Minute)
	if err != nil {
		return err
	}
	if after["MainPID"] == u["MainPID"] {
		return fmt.Errorf("the service was not restarted by the upgrade (pid %s)", u["MainPID"])
	}
	now, err := g.must(ctx, stateSum)
	if err != nil {
		return err
	}
	if now != before {
		return fmt.Errorf("config or state changed across the upgrade:\n%s\n%s", before, now)
	}
	if err := sameRegistration(ctx, s, reg); err != nil {
		return err
	}
	logf("debian: upgrade: %s installed, service restarted (pid %s -> %s), config and state unchanged, no new registration", ver, u["MainPID"], after["MainPID"])
	return nil
}

func sameRegistration(ctx context.Context, s *sim, reg *registration) error {
	r, err := s.registration(ctx, reg.RegistrationID)
	if err != nil {
		return err
	}
	if r == nil || r.Etag != reg.Etag || r.LastUpdated != reg.LastUpdated {
		return fmt.Errorf("the device registered again: %+v (was %+v)", r, reg)
	}
	return nil
}

// dataDropIn is the drop-in docs/packaging.md documents for a state
// directory on a data partition.
const dataDropIn = `[Unit]
RequiresMountsFor=/data/devid
[Service]
ReadWritePaths=/data/devid
`

func debianData(ctx context.Context, g *guest, s *sim, deviceID string, reg *registration) error {
	if err := g.dataMounted(ctx); err != nil {
		return err
	}
	script := `set -e
systemctl stop devid-agent
install -d -m 0700 -o devid -g devid /data/devid
cp -a /var/lib/devid/. /data/devid/
# The old copy goes aside: a state dir the agent still used would now be empty.
mv /var/lib/devid /var/lib/devid.moved
sed -i '1i state_dir = "/data/devid"' /etc/devid/config.toml
mkdir -p /etc/systemd/system/devid-agent.service.d
cat > /etc/systemd/system/devid-agent.service.d/data-partition.conf <<'EOF'
` + dataDropIn + `EOF
devid-agent config check >/dev/null
systemctl daemon-reload
systemctl start devid-agent
`
	if out, err := g.must(ctx, script); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	if _, err := g.waitConnected(ctx, 2*time.Minute); err != nil {
		return err
	}
	u, err := g.unit(ctx, "ReadWritePaths", "RequiresMountsFor")
	if err != nil {
		return err
	}
	if !strings.Contains(u["ReadWritePaths"], "/data/devid") {
		return fmt.Errorf("unit ReadWritePaths=%q does not follow the state dir", u["ReadWritePaths"])
	}
	if err := sameRegistration(ctx, s, reg); err != nil {
		return err
	}
	out, err := g.must(ctx, "findmnt -n -o SOURCE --target /data/devid; ls /data/devid; devid-agent status --config /etc/devid/config.toml 2>&1 | head -3")
	if err != nil {
		return err
	}
	logf("debian: data: state on the data partition, connected, same registration: %s", strings.Join(strings.Fields(out), " "))
	return nil
}
