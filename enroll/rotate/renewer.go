package rotate

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"devid/hal/clock"
)

// maxSleep bounds one wait of the loop, so that a stepped wall clock
// (NTP after a boot at 1970) is noticed within the hour.
const maxSleep = time.Hour

// Status is what `devid-agent status` and the reported properties show.
type Status struct {
	// Path is the issuance path that renews this credential ("" = none).
	Path string `json:"path"`
	// Configured is the path as configured when the caller chose Path
	// itself (the agent's renewal.path "auto"), and Why says why it
	// chose Path; both are set by that caller, empty otherwise.
	Configured string `json:"configured,omitempty"`
	Why        string `json:"why,omitempty"`
	// Policy is the effective policy, in the grammar.
	Policy string `json:"policy"`
	// Next is the next planned attempt (zero without a certificate or path).
	Next   time.Time `json:"next,omitzero"`
	Reason Reason    `json:"reason,omitempty"`
	// NotAfter is when the current leaf expires.
	NotAfter time.Time `json:"not_after,omitzero"`
	// Running is true while a rotation is under way.
	Running     bool      `json:"running"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	Rotations   int       `json:"rotations,omitempty"`
	// Unproven: the current credential has not connected yet (see
	// Record.Unproven).
	Unproven bool `json:"unproven,omitempty"`
}

// Renewer runs the renewal loop for one Rotator: it plans the next attempt
// from the policy and the certificate, waits for it (or for a trigger),
// rotates, and records the outcome. Configure the fields, then call Run
// once; the other methods are safe from any goroutine.
type Renewer struct {
	Rotator *Rotator
	// Policy is the configured policy; a desired-property policy
	// (SetPolicy) overrides it and is remembered in the record.
	Policy Policy
	// Clock is the loop's time source; nil is clock.System (tests run
	// that inside a testing/synctest bubble).
	Clock clock.Clock
	// OnRotated is called after each committed rotation, from the loop's
	// goroutine: the agent reconnects to the hub with the new credential.
	OnRotated func(Result)
	// Log defaults to the Rotator's.
	Log *slog.Logger
	// FirstIssuanceElsewhere: an empty slot is filled by the caller (the
	// agent registers with a CSR), not by the loop.
	FirstIssuanceElsewhere bool

	once    sync.Once
	trigger chan bool // value: rotate the key too
	wake    chan struct{}

	mu      sync.Mutex
	rec     Record
	running bool
}

func (w *Renewer) init() {
	w.once.Do(func() {
		w.trigger = make(chan bool, 1)
		w.wake = make(chan struct{}, 1)
		if w.Clock == nil {
			w.Clock = clock.System
		}
		if w.Log == nil {
			w.Log = w.Rotator.log()
		}
		if w.Rotator.Now == nil {
			w.Rotator.Now = w.Clock.Now
		}
		rec, err := LoadRecord(w.Rotator.StateDir)
		if err != nil {
			w.Log.Warn("renewal record", "err", err)
		}
		w.rec = rec
	})
}

// policy is the effective policy.
func (w *Renewer) policy() Policy {
	if w.rec.Policy != nil {
		return *w.rec.Policy
	}
	return w.Policy
}

// leaf reads the current certificate from the slot's chain file.
func (w *Renewer) leaf() (*x509.Certificate, error) {
	certs, err := readChain(w.Rotator.Slot.ChainPath)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// Status reports the path, the effective policy and the next attempt.
func (w *Renewer) Status() Status {
	w.init()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := Status{
		Path: w.pathLocked(), Policy: w.policy().String(), Running: w.running,
		LastSuccess: w.rec.LastSuccess, LastFailure: w.rec.LastFailure, LastError: w.rec.LastError,
		Failures: w.rec.Failures, Rotations: w.rec.Rotations, Unproven: w.rec.Unproven,
	}
	if leaf, err := w.leaf(); err == nil {
		st.NotAfter = leaf.NotAfter
		if w.Rotator.Issuer != nil {
			pl := w.policy().Next(w.Clock.Now(), leaf, w.rec.LastFailure)
			st.Next, st.Reason = pl.At, pl.Reason
		}
	}
	return st
}

func (w *Renewer) pathLocked() string {
	if w.Rotator.Issuer == nil {
		return PathNone
	}
	return w.Rotator.Issuer.Name()
}

// Reconfigure sets the issuer, the slot and FirstIssuanceElsewhere once
// the caller has chosen the path (the agent's renewal.path "auto"). Call
// it before Run, and while no RotateSync runs.
func (w *Renewer) Reconfigure(iss Issuer, slot Slot, firstIssuanceElsewhere bool) {
	w.init()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.Rotator.Issuer, w.Rotator.Slot, w.FirstIssuanceElsewhere = iss, slot, firstIssuanceElsewhere
}

// RotateNow asks the loop to rotate at once (the rotateCredential direct
// method). newKey also rotates the key. It returns false if a request is
// already pending.
func (w *Renewer) RotateNow(newKey bool) bool {
	w.init()
	select {
	case w.trigger <- newKey:
		return true
	default:
		return false
	}
}

// SetPolicy overrides the configured policy (nil: back to it) and keeps
// the override in the renewal record, so it survives a restart.
func (w *Renewer) SetPolicy(p *Policy) error {
	w.init()
	if p != nil {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	w.mu.Lock()
	w.rec.Policy = p
	rec := w.rec
	w.mu.Unlock()
	if err := SaveRecord(w.Rotator.StateDir, rec); err != nil {
		return err
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run plans, waits and rotates until ctx ends. It never returns early on
// a renewal failure: failures are recorded and retried on the policy's
// retry period, never faster than MinRetry.
func (w *Renewer) Run(ctx context.Context) error {
	w.init()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := w.Clock.Now()
		w.mu.Lock()
		pol, lastFail := w.policy(), w.rec.LastFailure
		w.mu.Unlock()
		wait := maxSleep
		leaf, err := w.leaf()
		switch {
		case w.Rotator.Issuer == nil:
			// No path: only a trigger can start anything (and will fail
			// with ErrNoIssuer, which status shows).
		case err != nil && w.FirstIssuanceElsewhere:
		case err != nil:
			// An empty slot (DPS issuance before its first operational
			// certificate): issue one now, and after a failure every
			// retry period.
			at := lastFail.Add(max(pol.Retry.Dur, MinRetry))
			if pol.Retry.Dur == 0 {
				at = lastFail.Add(time.Hour)
			}
			if !errors.Is(err, fs.ErrNotExist) {
				w.Log.Warn("renewal: current certificate unreadable", "err", err)
			}
			if lastFail.IsZero() || !now.Before(at) {
				w.attempt(ctx, true, "first-issuance")
				continue
			}
			wait = min(wait, at.Sub(now))
		default:
			pl := pol.Next(now, leaf, lastFail)
			if pl.Due(now) {
				w.attempt(ctx, false, string(pl.Reason))
				continue
			}
			wait = min(wait, pl.At.Sub(now))
		}
		timeout, stop := clock.After(w.Clock, wait)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case newKey := <-w.trigger:
			stop()
			w.attempt(ctx, newKey, "requested")
		case <-w.wake:
			stop()
		case <-timeout:
		}
	}
}

// RotateSync rotates now in the caller's goroutine through iss (nil: the
// Rotator's Issuer) and records the outcome like a scheduled attempt,
// without calling OnRotated: the caller takes the new credential itself
// (the agent's DPS registration, which always issues through DPS).
func (w *Renewer) RotateSync(ctx context.Context, iss Issuer, newKey bool, why string) (Result, error) {
	w.init()
	if iss == nil {
		iss = w.Rotator.Issuer
	}
	return w.do(ctx, iss, newKey, why)
}

// TrySync is RotateSync for a caller that is finding out whether iss
// issues at all: a failure that is ErrNotOffered is not recorded (it is
// an answer, not a renewal failure); any other outcome is.
func (w *Renewer) TrySync(ctx context.Context, iss Issuer, why string) (Result, error) {
	w.init()
	return w.run(ctx, iss, false, why, true)
}

func (w *Renewer) attempt(ctx context.Context, newKey bool, why string) {
	if ctx.Err() != nil {
		return
	}
	res, err := w.do(ctx, w.Rotator.Issuer, newKey, why)
	if err == nil && w.OnRotated != nil {
		w.OnRotated(res)
	}
}

func (w *Renewer) do(ctx context.Context, iss Issuer, newKey bool, why string) (Result, error) {
	return w.run(ctx, iss, newKey, why, false)
}

func (w *Renewer) run(ctx context.Context, iss Issuer, newKey bool, why string, trying bool) (Result, error) {
	newKey = newKey || w.Rotator.NewKey
	w.mu.Lock()
	w.running = true
	w.rec.LastAttempt = w.Clock.Now()
	w.mu.Unlock()
	w.Log.Info("renewal attempt", "why", why, "new_key", newKey)
	res, err := w.Rotator.rotate(ctx, iss, newKey)
	now := w.Clock.Now()
	w.mu.Lock()
	w.running = false
	if err != nil && trying && errors.Is(err, ErrNotOffered) {
		w.mu.Unlock()
		return res, err
	}
	if err != nil {
		w.rec.LastFailure, w.rec.LastError = now, err.Error()
		w.rec.Failures++
	} else {
		w.rec.Path, w.rec.Serial, w.rec.NotAfter = res.Path, res.Serial, res.NotAfter
		w.rec.LastSuccess, w.rec.LastFailure, w.rec.LastError, w.rec.Failures = now, time.Time{}, "", 0
		w.rec.Rotations++
		w.rec.Unproven = res.Unproven
	}
	rec := w.rec
	w.mu.Unlock()
	if serr := SaveRecord(w.Rotator.StateDir, rec); serr != nil {
		w.Log.Error("renewal record", "err", serr)
	}
	return res, err
}

// Proven records that the credential with serial (hex) connected: an
// unproven commit (Record.Unproven) of it is proven now.
func (w *Renewer) Proven(serial string) {
	w.init()
	w.mu.Lock()
	if !w.rec.Unproven || w.rec.Serial != serial {
		w.mu.Unlock()
		return
	}
	w.rec.Unproven = false
	rec := w.rec
	w.mu.Unlock()
	if err := SaveRecord(w.Rotator.StateDir, rec); err != nil {
		w.Log.Error("renewal record", "err", err)
	}
	w.Log.Info("renewal: the credential committed unproven has connected", "serial", serial)
}

// MethodName is the direct method that rotates the credential now.
const MethodName = "rotateCredential"

// HandleMethod serves the rotateCredential direct method. The payload is
// empty, null or {"rotate_key": true|false}. The rotation runs in the
// background; the answer is 202 with the status, or 409 when a request is
// already pending, or 400 for a payload it cannot read.
func (w *Renewer) HandleMethod(payload []byte) (int, []byte) {
	var req struct {
		RotateKey bool `json:"rotate_key"`
	}
	if len(payload) > 0 && string(payload) != "null" {
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			b, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("payload: want {\"rotate_key\": bool}: %v", err)})
			return 400, b
		}
	}
	if w.Rotator.Issuer == nil {
		b, _ := json.Marshal(map[string]string{"error": "no issuance path configured ([renewal] path)"})
		return 412, b
	}
	if !w.RotateNow(req.RotateKey) {
		b, _ := json.Marshal(map[string]string{"error": "a rotation request is already pending"})
		return 409, b
	}
	b, _ := json.Marshal(map[string]any{"accepted": true, "rotate_key": req.RotateKey, "status": w.Status()})
	return 202, b
}

// DesiredProperty is the desired-property name that carries the policy.
const DesiredProperty = "renewal"

// HandleDesired applies the desired property "renewal": a JSON object of
// the policy keys (see PolicyFromJSON) on top of the configured policy,
// or null to go back to it. It returns the effective policy, to be
// reported back.
func (w *Renewer) HandleDesired(raw json.RawMessage) (Policy, error) {
	w.init()
	if len(raw) == 0 || string(raw) == "null" {
		if err := w.SetPolicy(nil); err != nil {
			return Policy{}, err
		}
		return w.Policy, nil
	}
	p, err := PolicyFromJSON(raw, w.Policy)
	if err != nil {
		return Policy{}, err
	}
	return p, w.SetPolicy(&p)
}
