// Package tpm talks to a TPM 2.0 from pure Go with github.com/google/go-tpm
// (the tpm2 "direct" API): no tpm2-tss, no PKCS#11, no daemon.
//
// Open takes an address: a character device (/dev/tpmrm0, falling back to
// /dev/tpm0), or swtpm's raw data socket (unix:PATH or tcp:HOST:PORT) for
// tests and the virtual board. A TPM value serialises all use with one
// mutex, gives every command a timeout sized for slow discrete TPMs,
// flushes transient handles left behind by a crashed process, and probes
// what the TPM supports (CreateLoaded is missing on some parts).
//
// Keys: CreateKey makes a non-exportable ECC P-256 signing key under the
// TCG-standard ECC storage root key and returns its blob (public and
// wrapped private area); LoadKey loads a blob and returns a Key, which is
// a crypto.Signer usable for CSRs and TLS client authentication.
// EKDeviceID derives a stable device ID from the endorsement key.
//
// See docs/tpm.md for the design and its reasons.
package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound means no TPM is at the address (or none of DevicePaths exists).
	ErrNotFound = errors.New("no TPM found")
	// ErrBadAddress means the address string is malformed.
	ErrBadAddress = errors.New("bad TPM address")
	// ErrTimeout means a TPM command did not answer within its timeout.
	ErrTimeout = errors.New("TPM command timed out")
	// ErrBadResponse means the TPM's reply was not a well-formed response.
	ErrBadResponse = errors.New("malformed TPM response")
	// ErrClosed means the TPM was used after Close.
	ErrClosed = errors.New("TPM closed")
	// ErrBadBlob means a stored key blob could not be parsed.
	ErrBadBlob = errors.New("bad TPM key blob")
	// ErrWrongTPM means a key blob does not belong to this TPM: it was
	// made on another one, or before the TPM was cleared. The key is gone
	// for good; the device needs a new key and certificate.
	ErrWrongTPM = errors.New("key blob belongs to another TPM (or the TPM was cleared)")
)

// Timeouts bound each TPM command. The defaults are generous on purpose:
// a discrete SPI TPM takes 50–230 ms to make an ECC key and 20–200 ms to
// sign (600 ms at p95 in the field); RSA primaries take seconds. A timeout
// only exists to turn a wedged TPM into an error instead of a hang.
type Timeouts struct {
	// KeyGen covers CreatePrimary, Create and CreateLoaded.
	KeyGen time.Duration
	// Sign covers Sign.
	Sign time.Duration
	// Other covers every other command.
	Other time.Duration
}

// DefaultTimeouts are used unless WithTimeouts says otherwise.
var DefaultTimeouts = Timeouts{KeyGen: 30 * time.Second, Sign: 5 * time.Second, Other: 5 * time.Second}

func (t Timeouts) forCommand(cc tpm2.TPMCC) time.Duration {
	switch cc {
	case tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreate, tpm2.TPMCCCreateLoaded:
		return t.KeyGen
	case tpm2.TPMCCSign:
		return t.Sign
	}
	return t.Other
}

// Caps is what the capability probe found.
type Caps struct {
	// CreateLoaded is true when the TPM implements TPM2_CreateLoaded.
	CreateLoaded bool
	// Manufacturer is the vendor ID with padding trimmed ("IBM" for swtpm, "IFX", "STM", "NTC").
	Manufacturer string
	// FirmwareVersion is TPM_PT_FIRMWARE_VERSION_1 and _2, as "1.2.3.4"-ish hex.
	FirmwareVersion string
}

// Option configures Open.
type Option func(*options)

type options struct {
	timeouts       Timeouts
	noCreateLoaded bool
	noFlush        bool
}

// WithTimeouts replaces DefaultTimeouts. Zero fields keep their default.
func WithTimeouts(t Timeouts) Option {
	return func(o *options) {
		if t.KeyGen > 0 {
			o.timeouts.KeyGen = t.KeyGen
		}
		if t.Sign > 0 {
			o.timeouts.Sign = t.Sign
		}
		if t.Other > 0 {
			o.timeouts.Other = t.Other
		}
	}
}

// WithoutCreateLoaded makes Open behave as if the TPM lacked
// TPM2_CreateLoaded, forcing the Create+Load path (for tests and for
// parts whose CreateLoaded is known to be broken).
func WithoutCreateLoaded() Option { return func(o *options) { o.noCreateLoaded = true } }

// WithoutFlush skips flushing leftover transient handles at Open. Use it
// only when another process shares a TPM that has no resource manager.
func WithoutFlush() Option { return func(o *options) { o.noFlush = true } }

// TPM is an open TPM. All methods are safe for concurrent use; they are
// serialised by one mutex, because a TPM runs one command at a time and
// has only a few object slots (3 on common discrete parts).
type TPM struct {
	addr     Address
	timeouts Timeouts

	mu     sync.Mutex // guards everything below and every command sent
	conn   conn
	caps   Caps
	closed bool
}

// Open opens the TPM at addr (see ParseAddress), probes its capabilities
// and flushes leftover transient objects and sessions.
func Open(ctx context.Context, addr string, opts ...Option) (*TPM, error) {
	o := options{timeouts: DefaultTimeouts}
	for _, opt := range opts {
		opt(&o)
	}
	a, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	c, resolved, err := dialAddress(a)
	if err != nil {
		return nil, err
	}
	t := &TPM{addr: resolved, timeouts: o.timeouts, conn: c}
	err = t.Do(ctx, func(tr transport.TPM) error {
		caps, err := probe(tr)
		if err != nil {
			return err
		}
		if o.noCreateLoaded {
			caps.CreateLoaded = false
		}
		t.caps = caps
		if !o.noFlush {
			if _, err := flushLeftovers(tr); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		c.close()
		return nil, fmt.Errorf("open TPM %s: %w", resolved, err)
	}
	return t, nil
}

// Addr is the resolved address ("/dev/tpmrm0", "unix:/path", ...).
func (t *TPM) Addr() string { return t.addr.String() }

// Caps returns what the capability probe found at Open.
func (t *TPM) Caps() Caps {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.caps
}

// Close releases the TPM. Loaded keys become unusable.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.conn.close()
}

// Do runs fn with exclusive use of the TPM. Every command fn sends
// through tr gets its per-command timeout, shortened to ctx's deadline,
// and is retried while the TPM answers TPM_RC_RETRY, _YIELDED or _TESTING.
// fn must flush every transient handle it creates.
func (t *TPM) Do(ctx context.Context, fn func(tr transport.TPM) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	return fn(&lockedTransport{t: t, ctx: ctx})
}

// FlushLeftovers flushes every transient object and session the TPM
// holds, returning how many it flushed. Open does this already.
func (t *TPM) FlushLeftovers(ctx context.Context) (int, error) {
	var n int
	err := t.Do(ctx, func(tr transport.TPM) error {
		var err error
		n, err = flushLeftovers(tr)
		return err
	})
	return n, err
}

// lockedTransport is the transport.TPM handed to Do's callback.
type lockedTransport struct {
	t   *TPM
	ctx context.Context
}

// Send implements transport.TPM.
func (l *lockedTransport) Send(cmd []byte) ([]byte, error) {
	if len(cmd) < headerSize {
		return nil, fmt.Errorf("TPM command of %d bytes is shorter than its header", len(cmd))
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	timeout := l.t.timeouts.forCommand(cc)
	deadline := time.Now().Add(timeout)
	if d, ok := l.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	backoff := 5 * time.Millisecond
	for {
		if err := l.ctx.Err(); err != nil {
			return nil, fmt.Errorf("TPM command %#x: %w", uint32(cc), err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("TPM command %#x: %w after %v", uint32(cc), ErrTimeout, timeout)
		}
		rsp, err := l.t.conn.roundTrip(cmd, left)
		if err != nil {
			return nil, fmt.Errorf("TPM command %#x: %w", uint32(cc), err)
		}
		rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		switch rc {
		case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting:
			// The TPM did not run the command; sending it again is safe.
			if time.Until(deadline) < backoff {
				return rsp, nil
			}
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return nil, fmt.Errorf("TPM command %#x: %w", uint32(cc), l.ctx.Err())
			}
			backoff = min(backoff*2, 200*time.Millisecond)
			continue
		}
		return rsp, nil
	}
}

// manufacturer asks for TPM_PT_MANUFACTURER, the first command Open
// sends. A TPM that says it has not been started (a bare swtpm without
// --flags startup-clear; on a board the kernel or firmware does it) gets
// TPM2_Startup(CLEAR) and the question again.
func manufacturer(tr transport.TPM) (*tpm2.GetCapabilityResponse, error) {
	q := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 1}
	rsp, err := q.Execute(tr)
	if errors.Is(err, tpm2.TPMRCInitialize) {
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(tr); err != nil {
			return nil, fmt.Errorf("TPM2_Startup: %w", err)
		}
		rsp, err = q.Execute(tr)
	}
	if err != nil {
		return nil, fmt.Errorf("probe manufacturer: %w", err)
	}
	return rsp, nil
}

// probe starts the TPM if needed and reads its capabilities.
func probe(tr transport.TPM) (Caps, error) {
	var c Caps
	rsp, err := manufacturer(tr)
	if err != nil {
		return c, err
	}
	if props, err := rsp.CapabilityData.Data.TPMProperties(); err == nil && len(props.TPMProperty) > 0 {
		v := props.TPMProperty[0].Value
		c.Manufacturer = strings.TrimRight(string([]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), "\x00 ")
	}
	rsp, err = tpm2.GetCapability{Capability: tpm2.TPMCapCommands, Property: uint32(tpm2.TPMCCCreateLoaded), PropertyCount: 1}.Execute(tr)
	if err != nil {
		return c, fmt.Errorf("probe commands: %w", err)
	}
	cmds, err := rsp.CapabilityData.Data.Command()
	if err != nil {
		return c, fmt.Errorf("probe commands: %w", err)
	}
	for _, a := range cmds.CommandAttributes {
		if tpm2.TPMCC(a.CommandIndex) == tpm2.TPMCCCreateLoaded {
			c.CreateLoaded = true
		}
	}
	rsp, err = tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTFirmwareVersion1), PropertyCount: 2}.Execute(tr)
	if err == nil {
		if props, err := rsp.CapabilityData.Data.TPMProperties(); err == nil && len(props.TPMProperty) == 2 {
			v1, v2 := props.TPMProperty[0].Value, props.TPMProperty[1].Value
			c.FirmwareVersion = fmt.Sprintf("%d.%d.%d.%d", v1>>16, v1&0xffff, v2>>16, v2&0xffff)
		}
	}
	return c, nil
}

// flushLeftovers flushes every transient object and loaded session. On
// /dev/tpmrm0 the kernel gives each open file its own handle space, so
// this finds nothing; on /dev/tpm0 and swtpm it reclaims the slots a
// crashed process left behind (only 3 objects fit on common parts).
func flushLeftovers(tr transport.TPM) (int, error) {
	n := 0
	for _, first := range []uint32{0x80000000, 0x02000000, 0x03000000} {
		handles, err := listHandles(tr, first)
		if err != nil {
			return n, err
		}
		for _, h := range handles {
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tr); err != nil {
				return n, fmt.Errorf("flush handle %#x: %w", uint32(h), err)
			}
			n++
		}
	}
	return n, nil
}

// listHandles lists the handles in the range that starts at first.
func listHandles(tr transport.TPM, first uint32) ([]tpm2.TPMHandle, error) {
	var out []tpm2.TPMHandle
	prop := first
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: prop, PropertyCount: 64}.Execute(tr)
		if err != nil {
			return nil, fmt.Errorf("list handles from %#x: %w", first, err)
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, fmt.Errorf("list handles from %#x: %w", first, err)
		}
		for _, h := range hl.Handle {
			if uint32(h)>>24 != first>>24 {
				return out, nil
			}
			out = append(out, h)
		}
		if !rsp.MoreData || len(hl.Handle) == 0 {
			return out, nil
		}
		prop = uint32(hl.Handle[len(hl.Handle)-1]) + 1
	}
}

// Transient lists the transient object handles currently loaded, for
// tests and diagnostics.
func (t *TPM) Transient(ctx context.Context) ([]uint32, error) {
	var out []uint32
	err := t.Do(ctx, func(tr transport.TPM) error {
		hs, err := listHandles(tr, 0x80000000)
		for _, h := range hs {
			out = append(out, uint32(h))
		}
		return err
	})
	return out, err
}
