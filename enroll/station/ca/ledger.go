package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
)

// Ledger is the issuance ledger behind a Local CA. Two back-ends
// implement it: the embedded file ledger (ledger.jsonl in the CA
// directory, the default, for one station host) and PostgreSQL
// (ledger_pg.go, for every station of a line on one database). The rules
// are the same for both; docs/ca.md ("Ledger") states them.
type Ledger interface {
	// Issue records one issuance around sign. It checks the rules for r
	// (a device ID is bound to one key while it has a live certificate;
	// serials are unique), records r (Op issue, Serial set) before sign
	// runs, calls sign, and marks the record final after sign returns.
	// An error from Issue means the certificate must not be released.
	Issue(ctx context.Context, r Record, sign func() error) error
	// Revoke marks every live certificate of deviceID revoked, recording
	// station and reason, and returns their serials; ErrNotIssued if none.
	Revoke(ctx context.Context, deviceID, station, reason string, at time.Time) ([]string, error)
	// RevokeSerial marks one live certificate revoked; ErrNotIssued if the
	// serial is not in the ledger or already revoked.
	RevokeSerial(ctx context.Context, serial, station, reason string, at time.Time) error
	// IssueExternal records one issuance by another CA (an EST server),
	// whose serial is known only once sign returns the leaf. It checks
	// the device/key rule for r before sign runs (sign is not called if
	// the device ID is bound to another live key), then records the leaf
	// (r with its serial and validity) as issued. The PostgreSQL ledger
	// first reserves a placeholder row (Pending lists it until the
	// answer is recorded), so that a crash while the EST server answers
	// stays visible; the file ledger holds its lock across sign instead.
	// An error means the leaf must not be released.
	IssueExternal(ctx context.Context, r Record, sign func() (*x509.Certificate, error)) error
	// IssuedSerial returns the record of one serial (lowercase hex, as
	// Record.Serial) with its Status; ErrNotIssued if the ledger has none.
	IssuedSerial(ctx context.Context, serial string) (Record, error)
	// Refuse records a board refused at the attest step (no certificate).
	Refuse(ctx context.Context, r Record) error
	// Issued returns the issue records of a device ID, oldest first.
	Issued(ctx context.Context, deviceID string) ([]Record, error)
	// Refused returns the refuse records of a device ID, oldest first.
	Refused(ctx context.Context, deviceID string) ([]Record, error)
	// Revoked lists every revoked serial, the input of the CRL.
	Revoked(ctx context.Context) ([]Revocation, error)
	// Pending lists issuances reserved and never finalized: a station
	// stopped between reserving and releasing the certificate. The file
	// ledger has none (it records after signing, under its lock).
	Pending(ctx context.Context) ([]Record, error)
	Close() error
}

// Revocation is one revoked serial (lowercase hex, as in Record).
type Revocation struct {
	Serial   string
	DeviceID string
	Time     time.Time
	Reason   string
}

// Status values of Record.Status (set on read; not part of ledger.jsonl).
const (
	StatusReserved = "reserved" // recorded before signing, never finalized
	StatusIssued   = "issued"
	StatusRevoked  = "revoked"
)

// LedgerVersion is the schema version written in every ledger record.
const LedgerVersion = 1

// Ledger operations.
const (
	OpIssue  = "issue"
	OpRevoke = "revoke"
	// OpRefuse: a board refused at the attest step; no certificate.
	OpRefuse = "refuse"
)

// NoSerial is the serial of a refuse record, which has no certificate.
// Readers from before attestation require a serial on every line and
// skip operations they do not know, so they still read such a ledger.
const NoSerial = "-"

// ErrLedgerCorrupt means a ledger line other than the last cannot be read:
// the ledger was edited or the disk is failing, and the CA stops rather
// than issue on a record it cannot trust.
var ErrLedgerCorrupt = errors.New("issuance ledger corrupt")

// Record is one ledger line (JSON). An "issue" record is fsynced before
// the certificate leaves the CA; a "revoke" record marks Serial revoked.
type Record struct {
	V         int       `json:"v"`
	Op        string    `json:"op"`
	Time      time.Time `json:"time"`
	Serial    string    `json:"serial"`
	DeviceID  string    `json:"device_id"`
	KeySHA256 string    `json:"key_sha256,omitempty"`
	Station   string    `json:"station,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	Reason    string    `json:"reason,omitempty"`
	// Attestation is the outcome of the jig's attest step (attested,
	// not-offered, not-checked, refused:<reason>); "" in records written
	// without one (before attestation existed, or by Issue).
	Attestation string `json:"attestation,omitempty"`
	// EKSHA256 is the hex SHA-256 of the board's EK certificate (DER).
	EKSHA256 string `json:"ek_sha256,omitempty"`
	// Status is filled in by Issued and Pending (StatusReserved,
	// StatusIssued or StatusRevoked); it is not written to ledger.jsonl.
	Status string `json:"-"`
}

// issued is the index entry for one issued certificate.
type issued struct {
	Record
	Revoked     bool
	RevokedAt   time.Time
	RevokReason string
}

// ledger is the append-only issuance ledger (one JSON record per line).
// Several jig processes may share a CA directory: each operation holds an
// flock(2) on the file and first reads what others appended.
type ledger struct {
	// mu serialises goroutines: flock(2) does not, as they share the fd.
	mu       sync.Mutex
	path     string
	f        *os.File
	off      int64 // bytes indexed so far
	line     int   // lines indexed so far
	bySerial map[string]*issued
	byDevice map[string][]*issued
	refused  map[string][]Record
	now      func() time.Time
}

func openLedger(path string, now func() time.Time) (*ledger, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	l := &ledger{path: path, f: f, bySerial: map[string]*issued{}, byDevice: map[string][]*issued{}, refused: map[string][]Record{}, now: now}
	if err := l.lock(); err != nil {
		f.Close()
		return nil, err
	}
	l.unlock()
	return l, nil
}

func (l *ledger) close() error { return l.f.Close() }

// lock takes the exclusive lock and indexes records appended since the
// last call (by this process or another).
func (l *ledger) lock() error {
	l.mu.Lock()
	if err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_EX); err != nil {
		l.mu.Unlock()
		return fmt.Errorf("lock ledger: %w", err)
	}
	if err := l.catchUp(); err != nil {
		l.unlock()
		return err
	}
	return nil
}

func (l *ledger) unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.mu.Unlock()
}

// catchUp reads from the indexed offset to EOF. A last line without its
// newline, or that does not parse, is a write torn by a crash: nothing was
// returned for it (records are synced before a certificate is released),
// so it is moved aside to ledger.jsonl.torn and cut off.
func (l *ledger) catchUp() error {
	if _, err := l.f.Seek(l.off, io.SeekStart); err != nil {
		return fmt.Errorf("read ledger: %w", err)
	}
	rd := bufio.NewReader(l.f)
	for {
		b, err := rd.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(b) > 0 {
				return l.cutTorn(b)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ledger: %w", err)
		}
		var r Record
		if jerr := json.Unmarshal(bytes.TrimSpace(b), &r); jerr != nil || r.V == 0 || r.Serial == "" {
			if _, perr := rd.Peek(1); errors.Is(perr, io.EOF) {
				return l.cutTorn(b)
			}
			return fmt.Errorf("%w: %s line %d does not parse: %q", ErrLedgerCorrupt, l.path, l.line+1, truncate(b, 80))
		}
		if r.V != LedgerVersion {
			return fmt.Errorf("%w: %s line %d has schema version %d, this CA reads %d", ErrLedgerCorrupt, l.path, l.line+1, r.V, LedgerVersion)
		}
		l.index(r)
		l.off += int64(len(b))
		l.line++
	}
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func (l *ledger) cutTorn(b []byte) error {
	torn, err := os.OpenFile(l.path+".torn", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("save torn ledger tail: %w", err)
	}
	_, err = fmt.Fprintf(torn, "%s %q\n", l.now().UTC().Format(time.RFC3339), b)
	if err == nil {
		err = torn.Sync()
	}
	torn.Close()
	if err != nil {
		return fmt.Errorf("save torn ledger tail: %w", err)
	}
	if err := l.f.Truncate(l.off); err != nil {
		return fmt.Errorf("cut torn ledger tail: %w", err)
	}
	return l.f.Sync()
}

func (l *ledger) index(r Record) {
	switch r.Op {
	case OpIssue:
		e := &issued{Record: r}
		l.bySerial[r.Serial] = e
		l.byDevice[r.DeviceID] = append(l.byDevice[r.DeviceID], e)
	case OpRevoke:
		if e := l.bySerial[r.Serial]; e != nil && !e.Revoked {
			e.Revoked, e.RevokedAt, e.RevokReason = true, r.Time, r.Reason
		}
	case OpRefuse:
		l.refused[r.DeviceID] = append(l.refused[r.DeviceID], r)
	}
}

// append writes r durably (write, fsync) and indexes it. The caller holds
// the lock.
func (l *ledger) append(r Record) error {
	r.V = LedgerVersion
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("ledger record: %w", err)
	}
	b = append(b, '\n')
	if _, err := l.f.Seek(l.off, io.SeekStart); err != nil {
		return fmt.Errorf("append ledger: %w", err)
	}
	if _, err := l.f.Write(b); err != nil {
		// Cut any partial write so the file ends on a record boundary.
		_ = l.f.Truncate(l.off)
		return fmt.Errorf("append ledger: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		_ = l.f.Truncate(l.off)
		return fmt.Errorf("append ledger: fsync: %w", err)
	}
	l.off += int64(len(b))
	l.line++
	l.index(r)
	return nil
}

// fileLedger adapts the embedded ledger to the Ledger interface.
type fileLedger struct{ *ledger }

var _ Ledger = fileLedger{}

func (l fileLedger) Close() error { return l.close() }

// Issue holds the lock across the check, sign and the fsynced append: the
// certificate exists only in memory until its line is on disk, so a crash
// at any point leaves no released certificate without a line.
func (l fileLedger) Issue(ctx context.Context, r Record, sign func() error) error {
	if err := l.lock(); err != nil {
		return err
	}
	defer l.unlock()
	if err := l.checkKey(r); err != nil {
		return err
	}
	if _, dup := l.bySerial[r.Serial]; dup {
		return fmt.Errorf("%w: serial %s", ErrSerialTaken, r.Serial)
	}
	if err := sign(); err != nil {
		return err
	}
	r.Op = OpIssue
	return l.append(r)
}

func (l fileLedger) Revoke(ctx context.Context, deviceID, station, reason string, at time.Time) ([]string, error) {
	if err := l.lock(); err != nil {
		return nil, err
	}
	defer l.unlock()
	var serials []string
	for _, e := range l.byDevice[deviceID] {
		if e.Revoked {
			continue
		}
		if err := l.append(Record{Op: OpRevoke, Time: at, Serial: e.Serial, DeviceID: deviceID, Station: station, Reason: reason}); err != nil {
			return serials, err
		}
		serials = append(serials, e.Serial)
	}
	if len(serials) == 0 {
		return nil, fmt.Errorf("revoke %s: %w", deviceID, ErrNotIssued)
	}
	return serials, nil
}

func (l fileLedger) RevokeSerial(ctx context.Context, serial, station, reason string, at time.Time) error {
	if err := l.lock(); err != nil {
		return err
	}
	defer l.unlock()
	e := l.bySerial[serial]
	if e == nil || e.Revoked {
		return fmt.Errorf("revoke serial %s: %w", serial, ErrNotIssued)
	}
	return l.append(Record{Op: OpRevoke, Time: at, Serial: serial, DeviceID: e.DeviceID, Station: station, Reason: reason})
}

func (l fileLedger) Refuse(ctx context.Context, r Record) error {
	if err := l.lock(); err != nil {
		return err
	}
	defer l.unlock()
	r.Op, r.Serial = OpRefuse, NoSerial
	return l.append(r)
}

func (l fileLedger) Issued(ctx context.Context, deviceID string) ([]Record, error) {
	if err := l.lock(); err != nil {
		return nil, err
	}
	defer l.unlock()
	var out []Record
	for _, e := range l.byDevice[deviceID] {
		r := e.Record
		r.Status = StatusIssued
		if e.Revoked {
			r.Status = StatusRevoked
		}
		out = append(out, r)
	}
	return out, nil
}

func (l fileLedger) Refused(ctx context.Context, deviceID string) ([]Record, error) {
	if err := l.lock(); err != nil {
		return nil, err
	}
	defer l.unlock()
	return append([]Record(nil), l.refused[deviceID]...), nil
}

func (l fileLedger) Revoked(ctx context.Context) ([]Revocation, error) {
	if err := l.lock(); err != nil {
		return nil, err
	}
	defer l.unlock()
	var out []Revocation
	for _, e := range l.bySerial {
		if e.Revoked {
			out = append(out, Revocation{Serial: e.Serial, DeviceID: e.DeviceID, Time: e.RevokedAt, Reason: e.RevokReason})
		}
	}
	return out, nil
}

func (l fileLedger) Pending(ctx context.Context) ([]Record, error) { return nil, nil }

func (l fileLedger) IssueExternal(ctx context.Context, r Record, sign func() (*x509.Certificate, error)) error {
	if err := l.lock(); err != nil {
		return err
	}
	defer l.unlock()
	if err := l.checkKey(r); err != nil {
		return err
	}
	leaf, err := sign()
	if err != nil {
		return err
	}
	r.Serial = hex.EncodeToString(leaf.SerialNumber.Bytes())
	r.NotBefore, r.NotAfter = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
	if _, dup := l.bySerial[r.Serial]; dup {
		return fmt.Errorf("%w: serial %s (from the external CA)", ErrSerialTaken, r.Serial)
	}
	r.Op = OpIssue
	return l.append(r)
}

// checkKey refuses r if its device ID has a live certificate for another
// key. The caller holds the lock.
func (l fileLedger) checkKey(r Record) error {
	for _, e := range l.byDevice[r.DeviceID] {
		if e.KeySHA256 != r.KeySHA256 && !e.Revoked {
			return fmt.Errorf("%w: %s has serial %s for key sha256:%s; revoke it first", ErrIDTaken, r.DeviceID, e.Serial, e.KeySHA256)
		}
	}
	return nil
}

func (l fileLedger) IssuedSerial(ctx context.Context, serial string) (Record, error) {
	if err := l.lock(); err != nil {
		return Record{}, err
	}
	defer l.unlock()
	e := l.bySerial[serial]
	if e == nil {
		return Record{}, fmt.Errorf("serial %s: %w", serial, ErrNotIssued)
	}
	r := e.Record
	r.Status = StatusIssued
	if e.Revoked {
		r.Status = StatusRevoked
	}
	return r, nil
}
