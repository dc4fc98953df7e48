package rotate

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/credential"
	"devid/enroll/csr"
	"devid/enroll/keys"
	"devid/hal/atomicfile"
)

// Sentinel errors callers branch on. Every one of them leaves the current
// credential in place and working.
var (
	// ErrIssue: the issuer (DPS, EST) did not issue a certificate.
	ErrIssue = errors.New("certificate issuance failed")
	// ErrBadChain: the issued chain does not fit the key, the device or the clock.
	ErrBadChain = errors.New("issued chain rejected")
	// ErrProbe: the new credential could not connect; it was discarded.
	ErrProbe = errors.New("new credential failed its probe")
	// ErrNotReached is not returned by Rotate: a Probe wraps it when it
	// could not reach the service to try the candidate (the hub down or
	// unreachable), which is no verdict on the candidate. The rotation
	// then commits the candidate unproven (Result.Unproven). Only a probe
	// whose issuer has already made the candidate the credential the
	// service expects (DPS certificate issuance, docs/rotation.md) may
	// wrap it: keeping the old one would gain nothing.
	ErrNotReached = errors.New("probe could not reach the service")
	// ErrNoIssuer: no issuance path is configured, so renewal is impossible.
	ErrNoIssuer = errors.New("no issuance path configured")
	// ErrNotOffered: an Issuer wraps it when the service answered but
	// does not issue for this device (a DPS enrollment without
	// certificate issuance). It comes wrapped in ErrIssue.
	ErrNotOffered = errors.New("the service does not issue certificates for this device")
)

// Slot names one credential in the state directory: the key store spec
// (as keys.Open takes it) and the chain file (PEM, leaf first).
type Slot struct {
	KeySpec   string
	ChainPath string
}

// LoadCredential opens the key and chain a slot names.
func LoadCredential(slot Slot, stateDir string) (credential.Credential, error) {
	st, err := keys.Open(slot.KeySpec, stateDir)
	if err != nil {
		return credential.Credential{}, err
	}
	k, err := st.Load()
	if err != nil {
		return credential.Credential{}, err
	}
	chain, err := readChain(slot.ChainPath)
	if err != nil {
		keys.Close(k)
		return credential.Credential{}, err
	}
	if !sameKey(k.Public(), chain[0].PublicKey) {
		keys.Close(k)
		return credential.Credential{}, fmt.Errorf("load credential: chain %s does not certify key %s", slot.ChainPath, slot.KeySpec)
	}
	return credential.Credential{Signer: k, Chain: chain}, nil
}

// readChain reads and parses the PEM chain file at path (leaf first).
func readChain(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load chain: %w", err)
	}
	chain, err := certstore.ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("load chain %s: %w", path, err)
	}
	return chain, nil
}

func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// IssueRequest is what an Issuer gets.
type IssueRequest struct {
	// CSR is the DER PKCS#10 request, CN = RegistrationID.
	CSR []byte
	// Signer is the key the CSR is for (the staged key on key rotation).
	Signer crypto.Signer
	// Current is the credential in use now; EST authenticates with it.
	// Its Signer is nil when the slot is still empty.
	Current credential.Credential
	// RegistrationID is the device ID.
	RegistrationID string
}

// Issuer turns a CSR into a certificate chain (leaf first). Name is the
// issuance path recorded with the identity: "dps-csr" or "est".
type Issuer interface {
	Name() string
	Issue(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error)
}

// Probe proves a candidate credential, typically by connecting to the hub
// with it and disconnecting. An error keeps the old credential, unless it
// wraps ErrNotReached.
type Probe func(ctx context.Context, candidate credential.Credential) error

// Result describes a committed rotation.
type Result struct {
	Path     string    `json:"path"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	NewKey   bool      `json:"new_key"`
	// Unproven: the probe could not reach the service (ErrNotReached),
	// so the credential was committed without a connection to show for it.
	Unproven bool `json:"unproven,omitempty"`
}

// Rotator renews the credential in one slot with a two-phase commit.
// Rotate and Recover may be called from any goroutine; they serialise on
// a lock file in the state directory, so an agent and a CLI cannot
// rotate at once.
type Rotator struct {
	// StateDir holds the journal and the lock.
	StateDir string
	// Slot is the credential being renewed.
	Slot Slot
	// DeviceID is the CSR's CN (the registration ID); empty means the
	// current leaf's CN.
	DeviceID string
	// Issuer gets the new chain; nil means ErrNoIssuer.
	Issuer Issuer
	// Probe proves the new credential before the swap. It must not be nil:
	// a credential that was never shown to connect is never swapped in,
	// unless the probe says the service could not be reached at all
	// (ErrNotReached).
	Probe Probe
	// NewKey makes a new key (key rotation) instead of reusing the current one.
	NewKey bool
	// Roots, if set, must verify the issued chain (client auth).
	Roots *x509.CertPool
	// StagedSpec maps the current key spec to the staged one. Nil handles
	// the file backend ("file:PATH" -> "file:PATH.staged").
	StagedSpec func(spec string) (string, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives one record per step (default: discard).
	Log *slog.Logger
	// Step, if set, is called after each durable step (fault injection).
	Step StepHook

	mu sync.Mutex
}

// StepHook is called after each durable step of a rotation or recovery
// (names: begin, key, issued, staged, probed, proved, backup-N, rename-N,
// committed, destroyed, rollback-remove). It exists for fault injection:
// power-cut tests make it kill the process at a chosen step.
type StepHook func(step string)

func (h StepHook) at(name string) {
	if h != nil {
		h(name)
	}
}

func (r *Rotator) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Rotator) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Rotate obtains a new certificate (and key, with NewKey), proves it,
// swaps it in and only then destroys the old key. On any error the old
// credential is left in place and the error wraps one of ErrIssue,
// ErrBadChain, ErrProbe or ErrNoIssuer (or is a local I/O error).
func (r *Rotator) Rotate(ctx context.Context) (Result, error) {
	return r.rotate(ctx, r.Issuer, r.NewKey)
}

func (r *Rotator) rotate(ctx context.Context, iss Issuer, newKey bool) (Result, error) {
	if iss == nil {
		return Result{}, ErrNoIssuer
	}
	if r.Probe == nil {
		return Result{}, errors.New("rotate: no probe: a credential is never swapped in unproven")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	unlock, err := lockDir(r.StateDir)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	// A journal here means an earlier rotation was cut short.
	if _, err := recoverLocked(r.StateDir, r.log(), r.Step); err != nil {
		return Result{}, err
	}
	res, err := r.rotateLocked(ctx, iss, newKey)
	if err != nil {
		r.log().Warn("rotation failed; keeping the current credential", "path", iss.Name(), "err", err)
	}
	return res, err
}

func (r *Rotator) rotateLocked(ctx context.Context, iss Issuer, newKey bool) (Result, error) {
	cur, curErr := LoadCredential(r.Slot, r.StateDir)
	if curErr != nil {
		// An empty or broken slot: its first credential (e.g. the first
		// DPS-issued operational certificate) is installed the same way,
		// with a key of its own. (A path that needs the current
		// credential, EST, then fails in Issue and nothing changes.)
		r.log().Info("rotation: slot has no usable credential; installing a first one", "slot", r.Slot.ChainPath, "why", curErr)
		cur, newKey = credential.Credential{}, true
	}
	log := r.log().With("path", iss.Name(), "new_key", newKey)
	j := &journal{
		Phase: PhaseBegin, Start: r.now().UTC(), Path: iss.Name(), NewKey: newKey,
		KeySpec: r.Slot.KeySpec,
	}
	var stagedStore keys.Store
	if newKey {
		spec, files, err := r.stagedKey()
		if err != nil {
			return Result{}, err
		}
		j.StagedKeySpec = spec
		for _, f := range files {
			j.Renames = append(j.Renames, rename{From: f + StagedSuffix, To: f, Backup: f + OldSuffix})
		}
		if stagedStore, err = keys.Open(spec, r.StateDir); err != nil {
			return Result{}, fmt.Errorf("rotate: staged key: %w", err)
		}
	}
	if !inStateDir(r.StateDir, r.Slot.ChainPath) {
		return Result{}, fmt.Errorf("rotate: the chain %s is not in the state directory %s", r.Slot.ChainPath, r.StateDir)
	}
	j.Renames = append(j.Renames, rename{From: r.Slot.ChainPath + StagedSuffix, To: r.Slot.ChainPath, Backup: r.Slot.ChainPath + OldSuffix})
	if err := writeJournal(r.StateDir, j); err != nil {
		return Result{}, err
	}
	r.Step.at("begin")
	ok := false
	defer func() {
		if !ok {
			if err := rollBack(r.StateDir, j, r.Step); err != nil {
				log.Error("rotation: roll back", "err", err)
			}
		}
	}()

	signer := cur.Signer
	defer cur.Close()
	if newKey {
		// Leftovers of an attempt that crashed before its journal existed.
		_ = stagedStore.Destroy()
		k, err := stagedStore.Create()
		if err != nil {
			return Result{}, fmt.Errorf("rotate: create staged key: %w", err)
		}
		signer = k
		defer keys.Close(k)
		r.Step.at("key")
	}
	deviceID := r.DeviceID
	if deviceID == "" && cur.Leaf() != nil {
		deviceID = cur.Leaf().Subject.CommonName
	}
	csrDER, err := csr.Create(signer, deviceID)
	if err != nil {
		return Result{}, fmt.Errorf("rotate: %w", err)
	}
	chain, err := iss.Issue(ctx, IssueRequest{CSR: csrDER, Signer: signer, Current: cur, RegistrationID: deviceID})
	if err != nil {
		return Result{}, fmt.Errorf("%w: %s: %w", ErrIssue, iss.Name(), err)
	}
	r.Step.at("issued")
	if err := r.checkChain(chain, signer, deviceID); err != nil {
		return Result{}, err
	}
	if err := atomicfile.WriteFile(r.Slot.ChainPath+StagedSuffix, certstore.EncodePEM(chain...), 0o600); err != nil {
		return Result{}, fmt.Errorf("rotate: stage chain: %w", err)
	}
	j.Serial = hex.EncodeToString(chain[0].SerialNumber.Bytes())
	j.Phase = PhaseStaged
	if err := writeJournal(r.StateDir, j); err != nil {
		return Result{}, err
	}
	r.Step.at("staged")
	log.Info("rotation: staged new credential", "serial", j.Serial, "not_after", chain[0].NotAfter)

	if err := r.Probe(ctx, credential.Credential{Signer: signer, Chain: chain}); err != nil {
		if !errors.Is(err, ErrNotReached) {
			return Result{}, fmt.Errorf("%w: %w", ErrProbe, err)
		}
		// No verdict on the candidate, and the issuer has made it the one
		// the service expects: commit it; the caller connects with it
		// once the service is back.
		log.Warn("rotation: the probe could not reach the service; committing the new credential unproven", "serial", j.Serial, "err", err)
		j.Unproven = true
	}
	r.Step.at("probed")
	j.Phase = PhaseProved
	if err := writeJournal(r.StateDir, j); err != nil {
		return Result{}, err
	}
	ok = true // from here on the only way is forward
	r.Step.at("proved")
	if err := rollForward(r.StateDir, j, log, r.Step); err != nil {
		// The journal still says proved: Recover (at the next Rotate or
		// boot) finishes the swap.
		return Result{}, fmt.Errorf("rotate: swap: %w", err)
	}
	log.Info("rotation committed", "serial", j.Serial, "not_after", chain[0].NotAfter, "proved", !j.Unproven)
	return Result{Path: iss.Name(), Serial: j.Serial, NotAfter: chain[0].NotAfter, NewKey: newKey, Unproven: j.Unproven}, nil
}

// stagedKey returns the staged key's spec and the current key's files.
func (r *Rotator) stagedKey() (string, []string, error) {
	st, err := keys.Open(r.Slot.KeySpec, r.StateDir)
	if err != nil {
		return "", nil, fmt.Errorf("rotate: key: %w", err)
	}
	var files []string
	switch s := st.(type) {
	case interface{ Paths() []string }:
		files = s.Paths()
	case interface{ Path() string }:
		files = []string{s.Path()}
	default:
		return "", nil, fmt.Errorf("rotate: the %s key backend keeps no files this build can stage; key rotation is not available", st.Name())
	}
	for _, f := range files {
		if !inStateDir(r.StateDir, f) {
			return "", nil, fmt.Errorf("rotate: key rotation needs the key in the state directory %s, and %s is not", r.StateDir, f)
		}
	}
	stage := r.StagedSpec
	if stage == nil {
		stage = DefaultStagedSpec(st.Name(), files)
	}
	spec, err := stage(r.Slot.KeySpec)
	if err != nil {
		return "", nil, err
	}
	return spec, files, nil
}

// DefaultStagedSpec names the staged key beside the current one, for the
// file backend ("file:PATH" -> "file:PATH.staged") and the TPM backend
// (the same TPM, blob PATH.staged); a trailing ",curve=NAME" option is
// kept. backend is the store's Name(), which
// also resolves "auto"; files are the current store's key files.
func DefaultStagedSpec(backend string, files []string) func(string) (string, error) {
	return func(spec string) (string, error) {
		if len(files) != 1 {
			return "", fmt.Errorf("rotate: %s backend keeps %d key files; set Rotator.StagedSpec", backend, len(files))
		}
		scheme, arg, _ := strings.Cut(spec, ":")
		// A ",curve=NAME" option (last in the spec) carries over, so the
		// staged key is made on the configured curve.
		curve := ""
		if i := strings.LastIndex(spec, ",curve="); i >= 0 {
			curve = spec[i:]
		}
		switch backend {
		case "file":
			return "file:" + files[0] + StagedSuffix + curve, nil
		case "tpm":
			addr := ""
			if scheme == "tpm" {
				addr, _, _ = strings.Cut(arg, ",")
			}
			return "tpm:" + addr + ",blob=" + files[0] + StagedSuffix + curve, nil
		}
		return "", fmt.Errorf("rotate: no staged key naming for spec %q; set Rotator.StagedSpec", spec)
	}
}

func (r *Rotator) checkChain(chain []*x509.Certificate, signer crypto.Signer, deviceID string) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: empty chain", ErrBadChain)
	}
	leaf := chain[0]
	if !sameKey(signer.Public(), leaf.PublicKey) {
		return fmt.Errorf("%w: leaf public key is not the key the CSR was made with", ErrBadChain)
	}
	if leaf.Subject.CommonName != deviceID {
		return fmt.Errorf("%w: leaf CN %q, device ID %q", ErrBadChain, leaf.Subject.CommonName, deviceID)
	}
	now := r.now()
	if !leaf.NotAfter.After(leaf.NotBefore) {
		return fmt.Errorf("%w: leaf validity %v..%v is empty", ErrBadChain, leaf.NotBefore, leaf.NotAfter)
	}
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("%w: leaf already expired at %v", ErrBadChain, leaf.NotAfter)
	}
	if now.Add(5 * time.Minute).Before(leaf.NotBefore) {
		// Beyond clock skew: the CA or our clock is wrong.
		return fmt.Errorf("%w: leaf not valid before %v (clock says %v)", ErrBadChain, leaf.NotBefore, now)
	}
	if r.Roots != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: r.Roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return fmt.Errorf("%w: %v", ErrBadChain, err)
		}
	}
	return nil
}

// Recovery says what Recover found and did.
type Recovery struct {
	// Phase is the journal's phase, or "" when there was no journal.
	Phase Phase `json:"phase,omitempty"`
	// Action is "none", "rolled-back" or "rolled-forward".
	Action string `json:"action"`
}

// Recover resolves a rotation that a crash or power cut interrupted: a
// rotation that had not been proved is rolled back (the staged key and
// chain are destroyed, the current credential was never touched); a
// proved one is rolled forward (the swap is finished, then the old key is
// destroyed). Call it at boot before loading the credential. Without a
// journal it does nothing.
func Recover(stateDir string, log *slog.Logger) (Recovery, error) {
	return recoverDir(stateDir, log, nil)
}

// Recover is the package's Recover for this rotator's state directory,
// with its Log and Step hook.
func (r *Rotator) Recover() (Recovery, error) {
	return recoverDir(r.StateDir, r.log(), r.Step)
}

func recoverDir(stateDir string, log *slog.Logger, step StepHook) (Recovery, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(journalPath(stateDir)); errors.Is(err, fs.ErrNotExist) {
		return Recovery{Action: "none"}, nil
	}
	unlock, err := lockDir(stateDir)
	if err != nil {
		return Recovery{}, err
	}
	defer unlock()
	return recoverLocked(stateDir, log, step)
}

func recoverLocked(stateDir string, log *slog.Logger, step StepHook) (Recovery, error) {
	j, err := readJournal(stateDir)
	if err != nil || j == nil {
		return Recovery{Action: "none"}, err
	}
	rec := Recovery{Phase: j.Phase}
	if j.Phase == PhaseBegin || j.Phase == PhaseStaged {
		rec.Action = "rolled-back"
		err = rollBack(stateDir, j, step)
	} else {
		rec.Action = "rolled-forward"
		err = rollForward(stateDir, j, log, step)
	}
	if err != nil {
		return rec, fmt.Errorf("recover rotation (%s): %w", j.Phase, err)
	}
	log.Warn("recovered an interrupted credential rotation", "phase", j.Phase, "action", rec.Action, "serial", j.Serial)
	return rec, nil
}

// rollBack destroys everything staged; the current files were never touched.
func rollBack(stateDir string, j *journal, step StepHook) error {
	// The staged key is its files (a PEM key, or a TPM blob that holds
	// no TPM resources at rest), which are among the renames' sources:
	// removing them destroys it. Recovery never opens a key backend on
	// the journal's word (a corrupt journal must not make it dial a TPM
	// address or touch another key).
	for _, rn := range j.Renames {
		if err := removeIfExists(rn.From); err != nil {
			return err
		}
		removeTemps(rn.From)
		step.at("rollback-remove")
	}
	if err := syncDirs(j); err != nil {
		return err
	}
	return removeJournal(stateDir)
}

// rollForward finishes the swap (each step idempotent), records the
// commit, then destroys the old key and chain.
func rollForward(stateDir string, j *journal, log *slog.Logger, step StepHook) error {
	if j.Phase == PhaseProved {
		for i, rn := range j.Renames {
			if _, err := os.Lstat(rn.From); errors.Is(err, fs.ErrNotExist) {
				continue // already swapped in
			}
			// Keep the old file under Backup until the commit is recorded.
			if _, err := os.Lstat(rn.Backup); errors.Is(err, fs.ErrNotExist) {
				if err := linkOrCopy(rn.To, rn.Backup); err != nil {
					return err
				}
			}
			step.at(fmt.Sprintf("backup-%d", i))
			if err := os.Rename(rn.From, rn.To); err != nil {
				return fmt.Errorf("swap %s: %w", rn.To, err)
			}
			if err := atomicfile.SyncDir(filepath.Dir(rn.To)); err != nil {
				return err
			}
			step.at(fmt.Sprintf("rename-%d", i))
		}
		j.Phase = PhaseCommitted
		if err := writeJournal(stateDir, j); err != nil {
			return err
		}
		step.at("committed")
	}
	for _, rn := range j.Renames {
		if err := removeIfExists(rn.Backup); err != nil {
			return err
		}
		removeTemps(rn.From)
	}
	if err := syncDirs(j); err != nil {
		return err
	}
	step.at("destroyed")
	if j.NewKey {
		log.Info("rotation: old key destroyed")
	}
	return removeJournal(stateDir)
}

func linkOrCopy(from, to string) error {
	err := os.Link(from, to)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		// A missing current file (first credential in the slot) has nothing to keep.
		return nil
	}
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EXDEV) {
		b, rerr := os.ReadFile(from)
		if rerr != nil {
			return fmt.Errorf("back up %s: %w", from, rerr)
		}
		return atomicfile.WriteFile(to, b, 0o600)
	}
	return fmt.Errorf("back up %s: %w", from, err)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// removeTemps removes atomicfile temp files a crash left for path.
func removeTemps(path string) {
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	for _, f := range m {
		os.Remove(f)
	}
}

func syncDirs(j *journal) error {
	seen := map[string]bool{}
	for _, rn := range j.Renames {
		d := filepath.Dir(rn.To)
		if !seen[d] {
			seen[d] = true
			if err := atomicfile.SyncDir(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// lockDir takes an exclusive flock on the state directory's rotation
// lock, so that two processes never rotate or recover at once.
func lockDir(stateDir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(stateDir, "rotation.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("rotation lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("rotation lock: %w", err)
	}
	return func() { f.Close() }, nil
}
