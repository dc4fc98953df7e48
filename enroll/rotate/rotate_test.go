package rotate

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"devid/enroll/credential"
	"devid/enroll/keys"
)

func realNow() time.Time { return time.Now() }

// snapshot reads every file in dir (names and bytes), ignoring the lock.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "rotation.lock" {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		m[e.Name()] = b
	}
	return m
}

func TestRotateCommits(t *testing.T) {
	t.Parallel()
	for _, newKey := range []bool{false, true} {
		dir := t.TempDir()
		ca := newTestCA(t, realNow, 24*time.Hour)
		slot := provision(t, dir, ca)
		before, err := LoadCredential(slot, dir)
		if err != nil {
			t.Fatal(err)
		}
		r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: newKey, Roots: ca.roots()}
		res, err := r.Rotate(context.Background())
		if err != nil {
			t.Fatalf("newKey=%v: %v", newKey, err)
		}
		after, err := LoadCredential(slot, dir)
		if err != nil {
			t.Fatal(err)
		}
		if after.Leaf().SerialNumber.Cmp(before.Leaf().SerialNumber) == 0 {
			t.Errorf("newKey=%v: serial unchanged", newKey)
		}
		if got := sameKey(after.Signer.Public(), before.Signer.Public()); got == newKey {
			t.Errorf("newKey=%v: key same=%v", newKey, got)
		}
		if res.Serial == "" || !res.NotAfter.Equal(after.Leaf().NotAfter) || res.Path != "test-ca" {
			t.Errorf("result %+v", res)
		}
		if err := handshake(ca, after); err != nil {
			t.Errorf("new credential does not connect: %v", err)
		}
		names := slices.Sorted(func(yield func(string) bool) {
			for n := range snapshot(t, dir) {
				if !yield(n) {
					return
				}
			}
		})
		if want := []string{"device-chain.pem", "device.key"}; !slices.Equal(names, want) {
			t.Errorf("newKey=%v: state dir holds %v, want %v", newKey, names, want)
		}
		if fi, _ := os.Stat(filepath.Join(dir, "device.key")); fi.Mode().Perm() != 0o600 {
			t.Errorf("key mode %v", fi.Mode().Perm())
		}
	}
}

// Every failure before the swap leaves the state directory byte for byte
// as it was, and the old credential still connects.
func TestRotateFailuresKeepOld(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		set  func(r *Rotator, ca *testCA)
		want error
	}{
		{"ca refuses", func(r *Rotator, ca *testCA) { ca.refuse = errors.New("403 renewal not allowed") }, ErrIssue},
		{"probe fails", func(r *Rotator, ca *testCA) {
			r.Probe = func(context.Context, credential.Credential) error { return errors.New("CONNACK 5 not authorized") }
		}, ErrProbe},
		{"wrong CN", func(r *Rotator, ca *testCA) { ca.cn = "dev-2" }, ErrBadChain},
		{"untrusted", func(r *Rotator, ca *testCA) { r.Roots = newTestCA(t, realNow, time.Hour).roots() }, ErrBadChain},
		{"no issuer", func(r *Rotator, ca *testCA) { r.Issuer = nil }, ErrNoIssuer},
	}
	for _, c := range cases {
		for _, newKey := range []bool{false, true} {
			dir := t.TempDir()
			ca := newTestCA(t, realNow, 24*time.Hour)
			slot := provision(t, dir, ca)
			before := snapshot(t, dir)
			r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: newKey, Roots: ca.roots()}
			c.set(r, ca)
			_, err := r.Rotate(context.Background())
			if !errors.Is(err, c.want) {
				t.Errorf("%s newKey=%v: err %v, want %v", c.name, newKey, err, c.want)
			}
			after := snapshot(t, dir)
			if len(after) != len(before) {
				t.Errorf("%s newKey=%v: files %d -> %d", c.name, newKey, len(before), len(after))
			}
			for n, b := range before {
				if !bytes.Equal(after[n], b) {
					t.Errorf("%s newKey=%v: %s changed", c.name, newKey, n)
				}
			}
			cred, err := LoadCredential(slot, dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := handshake(ca, cred); err != nil {
				t.Errorf("%s: old credential no longer connects: %v", c.name, err)
			}
		}
	}
}

// A probe that could not reach the service (ErrNotReached) is no verdict:
// the candidate is committed, marked unproven, and nothing of the
// rotation is left behind. An empty slot (the first operational
// certificate) fills the same way.
func TestRotateUnreachedCommitsUnproven(t *testing.T) {
	t.Parallel()
	unreached := func(context.Context, credential.Credential) error {
		return fmt.Errorf("%w: dial tcp: connection refused", ErrNotReached)
	}
	for _, empty := range []bool{false, true} {
		dir := t.TempDir()
		ca := newTestCA(t, realNow, 24*time.Hour)
		slot := provision(t, dir, ca)
		if empty {
			slot = Slot{KeySpec: "file:" + filepath.Join(dir, "operational.key"), ChainPath: filepath.Join(dir, "operational-chain.pem")}
		}
		r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: unreached, Roots: ca.roots()}
		res, err := r.Rotate(context.Background())
		if err != nil || !res.Unproven {
			t.Fatalf("empty=%v: %+v %v, want an unproven commit", empty, res, err)
		}
		cred, err := LoadCredential(slot, dir)
		if err != nil {
			t.Fatalf("empty=%v: %v", empty, err)
		}
		if got := hex.EncodeToString(cred.Leaf().SerialNumber.Bytes()); got != res.Serial {
			t.Errorf("empty=%v: slot holds serial %s, want the committed %s", empty, got, res.Serial)
		}
		if err := handshake(ca, cred); err != nil {
			t.Errorf("empty=%v: committed credential does not connect: %v", empty, err)
		}
		for n := range snapshot(t, dir) {
			if n == JournalFile || strings.HasSuffix(n, StagedSuffix) || strings.HasSuffix(n, OldSuffix) {
				t.Errorf("empty=%v: %s left behind", empty, n)
			}
		}
	}
}

func TestRecoverRejectsBadJournal(t *testing.T) {
	t.Parallel()
	for _, body := range []string{`nope`, `{"schema":9,"phase":"begin"}`, `{"schema":1,"phase":"half"}`,
		`{"schema":1,"phase":"proved","renames":[{"from":"/etc/passwd","to":"/x","backup":"/x.old"}]}`} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, JournalFile), []byte(body), 0o600)
		if _, err := Recover(dir, nil); err == nil {
			t.Errorf("Recover accepted journal %s", body)
		}
	}
	if rec, err := Recover(t.TempDir(), nil); err != nil || rec.Action != "none" {
		t.Errorf("no journal: %+v %v", rec, err)
	}
}

// TestNewerJournalIsNeverTouched: a rotation journal from a newer agent
// (a downgrade in the middle of its rotation) stops every rotation with
// ErrNewerSchema, and the journal and the files it names stay as they
// are.
func TestNewerJournalIsNeverTouched(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	body := `{"schema":2,"phase":"proved","renames":[],"future_field":true}`
	os.WriteFile(filepath.Join(dir, JournalFile), []byte(body), 0o600)
	before := snapshot(t, dir)
	r := &Rotator{StateDir: dir, Slot: Slot{KeySpec: "file:" + filepath.Join(dir, "k.key"), ChainPath: filepath.Join(dir, "device-chain.pem")},
		DeviceID: "dev-1", Issuer: failingIssuer{}, Probe: func(context.Context, credential.Credential) error { return nil }}
	if _, err := r.Rotate(context.Background()); !errors.Is(err, ErrNewerSchema) {
		t.Errorf("Rotate over a newer journal: %v, want ErrNewerSchema", err)
	}
	if _, err := r.Recover(); !errors.Is(err, ErrNewerSchema) {
		t.Errorf("Recover over a newer journal: %v, want ErrNewerSchema", err)
	}
	if after := snapshot(t, dir); !maps.EqualFunc(before, after, bytes.Equal) {
		t.Errorf("the state dir changed: before %v, after %v", keysOf(before), keysOf(after))
	}
}

func keysOf(m map[string][]byte) []string { return slices.Sorted(maps.Keys(m)) }

// failingIssuer issues nothing: a test that gets this far has failed.
type failingIssuer struct{}

func (failingIssuer) Name() string { return "failing" }
func (failingIssuer) Issue(context.Context, IssueRequest) ([]*x509.Certificate, error) {
	return nil, errors.New("failingIssuer: a rotation was attempted")
}

// crashEnv names the environment of the crash helper process.
const (
	envHelper = "DEVID_ROTATE_HELPER"
	envDir    = "DEVID_ROTATE_DIR"
	envCA     = "DEVID_ROTATE_CA"
	envCrash  = "DEVID_ROTATE_CRASH"
	envNewKey = "DEVID_ROTATE_NEWKEY"
	envSpec   = "DEVID_ROTATE_SPEC"
)

// TestCrashHelper is the child process of TestKill9AtEveryStep: it
// rotates (or recovers) and SIGKILLs itself at the named step.
func TestCrashHelper(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("helper process only")
	}
	dir, crash := os.Getenv(envDir), os.Getenv(envCrash)
	hook := func(s string) {
		if mode == "record" {
			os.Stdout.WriteString("STEP " + s + "\n")
		}
		if s == crash {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	if mode == "recover" {
		if _, err := (&Rotator{StateDir: dir, Step: hook}).Recover(); err != nil {
			t.Fatal(err)
		}
		return
	}
	ca, err := loadTestCA(os.Getenv(envCA), realNow, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	slot := Slot{KeySpec: os.Getenv(envSpec), ChainPath: filepath.Join(dir, "device-chain.pem")}
	r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: os.Getenv(envNewKey) == "1", Roots: ca.roots(), Step: hook}
	if _, err := r.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func runHelper(t *testing.T, mode, dir, caDir, crash string, newKey bool, spec string) (string, bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	nk := "0"
	if newKey {
		nk = "1"
	}
	cmd.Env = append(os.Environ(), envHelper+"="+mode, envDir+"="+dir, envCA+"="+caDir, envCrash+"="+crash, envNewKey+"="+nk, envSpec+"="+spec)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return string(out), true
		}
		t.Fatalf("helper %s crash=%s: %v\n%s", mode, crash, err, out)
	}
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	return string(out), false
}

// TestKill9AtEveryStep kills a real rotation (real key files, real
// certificates) with SIGKILL after each durable step, then recovers, and
// checks that a credential that connects always remains: the old one if
// the crash came before the new one was proved, the new one after. It
// then also kills the recovery itself at each of its steps.
func TestKill9AtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	t.Parallel()
	for _, newKey := range []bool{false, true} {
		kill9AtEveryStep(t, newKey, func(dir string) string { return "file:" + filepath.Join(dir, "device.key") })
	}
}

func kill9AtEveryStep(t *testing.T, newKey bool, spec func(dir string) string) {
	caDir := t.TempDir()
	ca := newTestCA(t, realNow, 24*time.Hour)
	ca.save(t, caDir)
	// Learn the step names from a run that does not crash.
	recDir := t.TempDir()
	provisionSpec(t, recDir, ca, spec(recDir))
	out, _ := runHelper(t, "record", recDir, caDir, "", newKey, spec(recDir))
	var steps []string
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(l, "STEP "); ok {
			steps = append(steps, s)
		}
	}
	if len(steps) < 8 || !slices.Contains(steps, "proved") || !slices.Contains(steps, "committed") {
		t.Fatalf("steps %v", steps)
	}
	t.Logf("newKey=%v steps: %v", newKey, steps)
	provedAt := slices.Index(steps, "proved")
	for i, s := range steps {
		dir := t.TempDir()
		slot := provisionSpec(t, dir, ca, spec(dir))
		old := mustLoad(t, slot, dir)
		if _, crashed := runHelper(t, "rotate", dir, caDir, s, newKey, slot.KeySpec); !crashed {
			t.Fatalf("helper did not crash at %s", s)
		}
		wantNew := i >= provedAt
		checkRecovered(t, dir, slot, ca, old, wantNew, "crash at "+s)

		// Crash the recovery too, at each of its steps, then recover.
		if !wantNew || s == "destroyed" {
			continue
		}
		for _, rs := range []string{"backup-0", "rename-0", "backup-1", "rename-1", "committed"} {
			dir := t.TempDir()
			slot := provisionSpec(t, dir, ca, spec(dir))
			old := mustLoad(t, slot, dir)
			runHelper(t, "rotate", dir, caDir, s, newKey, slot.KeySpec)
			runHelper(t, "recover", dir, caDir, rs, newKey, slot.KeySpec)
			checkRecovered(t, dir, slot, ca, old, true, "crash at "+s+" then in recovery at "+rs)
		}
	}
}

// mustLoad loads a credential and releases its key (a TPM object).
func mustLoad(t *testing.T, slot Slot, dir string) credential.Credential {
	t.Helper()
	c, err := LoadCredential(slot, dir)
	if err != nil {
		t.Fatal(err)
	}
	keys.Close(c.Signer)
	return c
}

func checkRecovered(t *testing.T, dir string, slot Slot, ca *testCA, old credential.Credential, wantNew bool, what string) {
	t.Helper()
	if _, err := Recover(dir, nil); err != nil {
		t.Fatalf("%s: recover: %v", what, err)
	}
	cred, err := LoadCredential(slot, dir)
	if err != nil {
		t.Fatalf("%s: no usable credential after recovery: %v", what, err)
	}
	defer keys.Close(cred.Signer)
	if err := handshake(ca, cred); err != nil {
		t.Fatalf("%s: credential after recovery does not connect: %v", what, err)
	}
	isNew := cred.Leaf().SerialNumber.Cmp(old.Leaf().SerialNumber) != 0
	if isNew != wantNew {
		t.Errorf("%s: got new credential=%v, want %v", what, isNew, wantNew)
	}
	for n := range snapshot(t, dir) {
		if n != "device.key" && n != "device.tpmkey" && n != "device-chain.pem" && n != RecordFile {
			t.Errorf("%s: left over %s", what, n)
		}
	}
}

// BenchmarkRotate measures one full rotation with a new file key: key
// generation, CSR, issuance by an in-process CA, a TLS handshake as the
// probe, and the two-phase commit with its fsyncs.
func BenchmarkRotate(b *testing.B) {
	dir := b.TempDir()
	ca := newTestCA(b, realNow, 24*time.Hour)
	slot := provision(b, dir, ca)
	r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: true}
	for b.Loop() {
		if _, err := r.Rotate(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzRecover feeds arbitrary journals to Recover: it never panics, and
// whatever the journal says, the current key and chain survive (a
// corrupt or forged journal can only remove staged and backup files).
func FuzzRecover(f *testing.F) {
	for _, s := range []string{
		`{"schema":1,"phase":"begin","key_spec":"file:K","staged_key_spec":"file:K","renames":[]}`,
		`{"schema":1,"phase":"begin","staged_key_spec":"file:DIR/device.key"}`,
		`{"schema":1,"phase":"proved","renames":[{"from":"DIR/device-chain.pem.staged","to":"DIR/device-chain.pem","backup":"DIR/device-chain.pem.old"}]}`,
		`{"schema":1,"phase":"committed","renames":[{"from":"DIR/device.key.staged","to":"DIR/device.key","backup":"DIR/device.key.old"}]}`,
		`{"schema":1,"phase":"staged","staged_key_spec":"tpm:,blob=DIR/device.key"}`,
		`{"schema":0}`, `[]`, `{`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		dir := t.TempDir()
		key, chain := filepath.Join(dir, "device.key"), filepath.Join(dir, "device-chain.pem")
		os.WriteFile(key, []byte("KEY"), 0o600)
		os.WriteFile(chain, []byte("CHAIN"), 0o600)
		os.WriteFile(filepath.Join(dir, JournalFile), []byte(strings.ReplaceAll(body, "DIR", dir)), 0o600)
		Recover(dir, nil)
		for p, want := range map[string]string{key: "KEY", chain: "CHAIN"} {
			if b, err := os.ReadFile(p); err != nil || string(b) != want {
				t.Fatalf("journal %s destroyed %s: %v %q", body, p, err, b)
			}
		}
	})
}
