package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/hal/hosttest"
	"devid/hal/serial/serialtest"
)

// buildBinaries builds devid-agent and devid-jig once per test run.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "devid-e2e-bin")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "devid/agent/cmd/devid-agent", "devid/enroll/cmd/devid-jig")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", &buildError{string(out), err}
	}
	return dir, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := buildOnce(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func bins(t *testing.T) (agent, jig string) {
	t.Helper()
	dir, err := buildOnce()
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return filepath.Join(dir, "devid-agent"), filepath.Join(dir, "devid-jig")
}

// startAgent runs `devid-agent factory` on tty and waits until it serves.
func startAgent(t *testing.T, agent, tty, state, root string) {
	t.Helper()
	cmd := exec.Command(agent, "factory", "--port", tty, "--state", state, "--root", root, "--device-id", "e2e-board-1", "--key", "file:")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var log bytes.Buffer
	ready := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "serving factory bus") {
				close(ready)
			}
		}
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		<-done
		if err := cmd.Wait(); err != nil {
			t.Errorf("devid-agent factory exited with %v after SIGTERM; log:\n%s", err, log.String())
		}
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("devid-agent factory exited early:\n%s", log.String())
	case <-time.After(30 * time.Second):
		t.Fatal("devid-agent factory did not start serving")
	}
}

func runJig(t *testing.T, jig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, jig, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

type programResult struct {
	DeviceID string `json:"device_id"`
	Serial   string `json:"serial"`
	ChainPEM string `json:"chain_pem"`
}

// opensslVerify checks the printed chain as a third party would.
func opensslVerify(t *testing.T, caDir, chainPEM string) {
	t.Helper()
	dir := t.TempDir()
	var leaf, inter []byte
	rest := []byte(chainPEM)
	for i := 0; ; i++ {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if i == 0 {
			leaf = pem.EncodeToMemory(blk)
		} else {
			inter = append(inter, pem.EncodeToMemory(blk)...)
		}
	}
	os.WriteFile(filepath.Join(dir, "leaf.pem"), leaf, 0o644)
	os.WriteFile(filepath.Join(dir, "inter.pem"), inter, 0o644)
	out, err := exec.Command("openssl", "verify", "-purpose", "sslclient", "-CAfile", filepath.Join(caDir, "root.pem"),
		"-untrusted", filepath.Join(dir, "inter.pem"), filepath.Join(dir, "leaf.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

func TestEndToEndProgramOverPty(t *testing.T) {
	hosttest.LookPath(t, hosttest.OpenSSL, "openssl")
	agent, jig := bins(t)
	caDir := filepath.Join(t.TempDir(), "ca")
	if out, _, err := runJig(t, jig, "ca", "init", "--dir", caDir); err != nil || !strings.Contains(out, "CA created") {
		t.Fatalf("ca init: %v %s", err, out)
	}
	link := serialtest.NewLink(t)
	state := filepath.Join(t.TempDir(), "state")
	startAgent(t, agent, link.DeviceTTY, state, filepath.Join(caDir, "root.pem"))

	// Human-readable run: one progress line per step, then the result.
	out, errOut, err := runJig(t, jig, "program", "--port", link.JigTTY, "--ca-dir", caDir, "--station", "e2e")
	if err != nil {
		t.Fatalf("program: %v\n%s%s", err, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 || !strings.HasPrefix(lines[0], "[1/6] hello") || lines[2] != "[3/6] attest  not offered by the board (key file)" ||
		!strings.HasPrefix(lines[6], "OK device e2e-board-1 serial ") {
		t.Fatalf("program output:\n%s", out)
	}

	// The board is programmed now: a plain run leaves it alone, so the
	// next runs reissue. Kill the jig mid-INSTALL with SIGKILL, then rerun
	// with --json.
	var killOnce sync.Once
	var victim *exec.Cmd
	var mu sync.Mutex
	link.SetTamper(func(dir serialtest.Direction, total int, b []byte) []byte {
		// devid-jig speaks protocol 2 with this agent: 162-byte chunks
		// (docs/factory-protocol.md, section 12).
		if dir == serialtest.ToDevice && bytes.Contains(b, []byte("INSTALL DATA 324 ")) {
			killOnce.Do(func() {
				mu.Lock()
				victim.Process.Kill()
				mu.Unlock()
			})
			return b[:len(b)/2] // the jig died halfway through this frame
		}
		return b
	})
	mu.Lock()
	victim = exec.Command(jig, "program", "--port", link.JigTTY, "--ca-dir", caDir, "--json", "--reissue")
	victim.Stdout, victim.Stderr = io.Discard, io.Discard
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	mu.Unlock()
	if err := victim.Wait(); err == nil {
		t.Fatal("jig survived SIGKILL")
	}
	link.SetTamper(nil)

	out, errOut, err = runJig(t, jig, "program", "--port", link.JigTTY, "--ca-dir", caDir, "--json", "--reissue")
	if err != nil {
		t.Fatalf("rerun after kill: %v\n%s", err, errOut)
	}
	var res programResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.DeviceID != "e2e-board-1" || res.Serial == "" {
		t.Fatalf("--json output %q: %v", out, err)
	}
	opensslVerify(t, caDir, res.ChainPEM)
	stored, _ := os.ReadFile(filepath.Join(state, "device-chain.pem"))
	if string(stored) != res.ChainPEM {
		t.Fatal("device stored a different chain from the one printed")
	}
	if out, _, err := runJig(t, jig, "status", "--port", link.JigTTY); err != nil || !strings.Contains(out, "state programmed serial "+res.Serial) {
		t.Fatalf("status: %v %s", err, out)
	}
	// The ledger holds every issuance, the killed run's included.
	ledger, _ := os.ReadFile(filepath.Join(caDir, "ledger.jsonl"))
	if n := strings.Count(string(ledger), `"op":"issue"`); n != 3 {
		t.Fatalf("ledger has %d issue records, want 3:\n%s", n, ledger)
	}
	if out, _, err := runJig(t, jig, "revoke", "--ca-dir", caDir, "--device-id", "e2e-board-1"); err != nil || !strings.Contains(out, res.Serial) {
		t.Fatalf("revoke: %v %s", err, out)
	}
	if out, err := exec.Command("openssl", "crl", "-in", filepath.Join(caDir, "crl.pem"), "-noout", "-text").CombinedOutput(); err != nil ||
		!strings.Contains(strings.ToLower(string(out)), res.Serial) {
		t.Fatalf("CRL does not list %s: %v\n%s", res.Serial, err, out)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	_, jig := bins(t)
	for _, args := range [][]string{
		{}, {"nosuch"}, {"program"}, {"program", "--port", "/dev/null"}, {"ca"}, {"reset", "--port", "/dev/null"},
	} {
		_, stderr, err := runJig(t, jig, args...)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || stderr == "" {
			t.Errorf("devid-jig %v: %v (stderr %q), want exit 2 with a reason", args, err, stderr)
		}
	}
	if _, stderr, err := runJig(t, jig, "program", "--port", "/nonexistent", "--ca-dir", "/nonexistent"); err == nil || !strings.Contains(stderr, "/nonexistent") {
		t.Errorf("missing CA dir: %v %q", err, stderr)
	}
	// A device that never answers: non-zero exit, the reason, and with
	// --json an error object on stdout.
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, _, err := runJig(t, jig, "ca", "init", "--dir", caDir); err != nil {
		t.Fatal(err)
	}
	pair := serialtest.Pty(t)
	out, stderr, err := runJig(t, jig, "program", "--port", pair.TTY, "--ca-dir", caDir, "--json", "--timeout", "200ms", "--retries", "1")
	var obj struct{ Error, Step string }
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || json.Unmarshal([]byte(out), &obj) != nil ||
		obj.Step != "hello" || !strings.Contains(obj.Error, "no valid reply") || !strings.Contains(stderr, "no valid reply") {
		t.Errorf("silent device: %v, stdout %q, stderr %q", err, out, stderr)
	}
	// The step is named once: "HELLO: no valid reply", not "hello: HELLO: …".
	if strings.Count(strings.ToLower(obj.Error), "hello") != 1 {
		t.Errorf("silent device: the step is named more than once in %q", obj.Error)
	}
	// --json answers every failure with one object on stdout, whatever
	// the step: before, a CA or port that could not be opened printed
	// nothing there.
	for _, tc := range []struct {
		step string
		args []string
		code int
	}{
		{"ca", []string{"program", "--port", pair.TTY, "--ca-dir", "/nonexistent", "--json"}, 1},
		{"port", []string{"program", "--port", "/nonexistent-tty", "--ca-dir", caDir, "--json"}, 1},
		{"setup", []string{"program", "--port", pair.TTY, "--json", "--ca-dir", caDir, "--est", "https://est.example"}, 2},
		{"setup", []string{"program", "--port", pair.TTY, "--json", "--ca-dir", caDir, "--require-attestation"}, 2},
		{"setup", []string{"program", "--port", pair.TTY, "--json", "--ca-dir", caDir, "--tpm-roots", "/nonexistent-roots.pem"}, 1},
	} {
		out, _, err := runJig(t, jig, tc.args...)
		var obj struct {
			OK          bool
			Step, Error string
		}
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != tc.code || json.Unmarshal([]byte(out), &obj) != nil || obj.OK || obj.Step != tc.step || obj.Error == "" {
			t.Errorf("--json, failure at %s: %v, stdout %q; want exit %d and {ok:false, step:%q, error}", tc.step, err, out, tc.code, tc.step)
		}
	}
}
