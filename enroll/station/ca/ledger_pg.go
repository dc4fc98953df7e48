package ca

import (
	"context"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the versioned schema files of the PostgreSQL ledger,
// NNNN_name.sql, applied in order at open (docs/ca.md).
//
//go:embed migrations/*.sql
var migrations embed.FS

// DefaultLedgerRetry is how long a PostgreSQL ledger operation keeps
// retrying, with backoff, while the database is unreachable (a restart or
// fail-over), before the station gives up on that board.
const DefaultLedgerRetry = 60 * time.Second

// checkLedgerURL accepts "", "file" and postgres:// or postgresql:// URLs
// without a password: policy.toml is world-readable and a flag shows in
// ps, so the password comes from PGPASSWORD or ~/.pgpass (PGPASSFILE).
func checkLedgerURL(s string) error {
	if s == "" || s == "file" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("want \"file\" or a postgres:// URL, not scheme %q", u.Scheme)
	}
	if _, ok := u.User.Password(); ok || u.Query().Has("password") {
		return errors.New("the URL holds a password: give it in PGPASSWORD or ~/.pgpass (PGPASSFILE) instead")
	}
	return nil
}

// pgLedger is the PostgreSQL ledger. The rules are constraints of the
// schema (migrations/0001_ledger.sql); this code maps their violations to
// the CA's errors and retries operations the database did not answer.
type pgLedger struct {
	pool     *pgxpool.Pool
	retryFor time.Duration
	// retries counts attempts repeated because the database did not answer.
	retries atomic.Int64
}

var _ Ledger = (*pgLedger)(nil)

func openPGLedger(ctx context.Context, dsn, issuerSHA256 string, retryFor time.Duration) (*pgLedger, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("ledger database URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("ledger database: %w", err)
	}
	if retryFor <= 0 {
		retryFor = DefaultLedgerRetry
	}
	p := &pgLedger{pool: pool, retryFor: retryFor}
	if err := p.retry(ctx, "migrate", func(int) error { return migrate(ctx, pool) }); err != nil {
		pool.Close()
		return nil, err
	}
	var bound string
	err = p.retry(ctx, "bind to CA", func(int) error {
		return pool.QueryRow(ctx, `INSERT INTO ca_binding (issuer_sha256) VALUES ($1)
			ON CONFLICT (one) DO UPDATE SET one = true RETURNING issuer_sha256`, issuerSHA256).Scan(&bound)
	})
	if err != nil {
		pool.Close()
		return nil, err
	}
	if bound != issuerSHA256 {
		pool.Close()
		return nil, fmt.Errorf("ledger database %s holds the ledger of another issuing CA (sha256:%s), not this one (sha256:%s)",
			redact(dsn), bound, issuerSHA256)
	}
	return p, nil
}

// redact hides a password in a URL, for messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(a ledger URL that does not parse)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// migrationLock is the advisory lock that serialises stations migrating
// the same database at start ("devi" in ASCII).
const migrationLock = 0x64657669

// migrate applies the embedded migrations not yet recorded in
// schema_migrations, each with its record, in one transaction under an
// advisory lock: stations starting together apply each exactly once.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(files)
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return err
	}
	maxApplied := 0
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return err
		}
		applied[v] = true
		maxApplied = max(maxApplied, v)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	known := 0
	for _, f := range files {
		name := strings.TrimSuffix(strings.TrimPrefix(f, "migrations/"), ".sql")
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			return fmt.Errorf("ledger migration %s: name does not start with a version number", f)
		}
		known = max(known, v)
		if applied[v] {
			continue
		}
		sql, err := migrations.ReadFile(f)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, string(sql)); err != nil {
			return fmt.Errorf("ledger migration %s: %w", f, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, v, name); err != nil {
			return err
		}
	}
	if maxApplied > known {
		return fmt.Errorf("ledger database schema is at version %d, newer than this devid-jig knows (%d): upgrade the station", maxApplied, known)
	}
	return tx.Commit(ctx)
}

// retryable reports whether err means the database did not answer (down,
// restarting, connection lost), as opposed to an answer.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, crash, starting up
			pe.Code == "40001", pe.Code == "40P01": // serialization failure, deadlock
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err) || pgconn.Timeout(err)
}

// retry runs f until it succeeds, fails with an answer, or the database
// has been unreachable for retryFor; the delay doubles from 20 ms to 1 s.
// f gets the attempt number: an operation whose reply was lost may have
// committed, and a later attempt must recognise its own work.
func (p *pgLedger) retry(ctx context.Context, what string, f func(attempt int) error) error {
	delay := 20 * time.Millisecond
	deadline := time.Now().Add(p.retryFor)
	for attempt := 0; ; attempt++ {
		err := f(attempt)
		if err == nil || !retryable(err) {
			return err
		}
		p.retries.Add(1)
		if time.Now().After(deadline) {
			return fmt.Errorf("ledger %s: database unreachable for %v: %w", what, p.retryFor, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, time.Second)
	}
}

func (p *pgLedger) Close() error { p.pool.Close(); return nil }

// Issue: reserve (bind the key, insert the row as reserved, commit), sign,
// finalize (reserved -> issued, commit). A crash after the reservation
// leaves the row reserved, which Pending reports.
func (p *pgLedger) Issue(ctx context.Context, r Record, sign func() error) error {
	if err := p.reserve(ctx, r); err != nil {
		return err
	}
	if err := sign(); err != nil {
		// No certificate exists: void the reservation (best effort; a
		// row left reserved is reported by Pending).
		_ = p.retry(ctx, "void", func(int) error {
			_, err := p.pool.Exec(ctx, `UPDATE certificates SET status = 'void', reason = $2 WHERE serial = $1 AND status = 'reserved'`, r.Serial, truncateStr(err.Error(), 200))
			return err
		})
		return err
	}
	return p.retry(ctx, "finalize", func(attempt int) error {
		tag, err := p.pool.Exec(ctx, `UPDATE certificates SET status = 'issued', issued_at = $2 WHERE serial = $1 AND status = 'reserved'`, r.Serial, time.Now().UTC())
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		var status string
		if err := p.pool.QueryRow(ctx, `SELECT status FROM certificates WHERE serial = $1`, r.Serial).Scan(&status); err != nil {
			return fmt.Errorf("ledger finalize serial %s: %w", r.Serial, err)
		}
		if status == StatusIssued && attempt > 0 {
			return nil // an earlier attempt committed; its reply was lost
		}
		return fmt.Errorf("ledger finalize serial %s: the row is %s, not reserved (revoked meanwhile?)", r.Serial, status)
	})
}

// ExternalPending is the reason of the placeholder row an external
// issuance (IssueExternal: an EST server) reserves before asking the
// server; Pending lists such a row until the answer is recorded.
const ExternalPending = "awaiting the EST server: the serial is not known yet"

// IssueExternal: reserve a placeholder row (a random serial, status
// reserved, reason ExternalPending) binding the device to the key, ask
// sign (the EST server), then in one transaction void the placeholder
// and insert the leaf's serial as issued. A crash while the server
// answers leaves the placeholder reserved: Pending (devid-jig ledger
// pending) reports it, and the certificate the server may have issued is
// found at the EST CA by device ID.
func (p *pgLedger) IssueExternal(ctx context.Context, r Record, sign func() (*x509.Certificate, error)) error {
	sn, err := newSerial()
	if err != nil {
		return err
	}
	ph := hex.EncodeToString(sn.Bytes())
	rv := r
	rv.Serial, rv.NotBefore, rv.NotAfter, rv.Reason = ph, r.Time, r.Time, ExternalPending
	if err := p.reserve(ctx, rv); err != nil {
		return err
	}
	leaf, err := sign()
	if err != nil {
		_ = p.retry(ctx, "void", func(int) error {
			_, err := p.pool.Exec(ctx, `UPDATE certificates SET status = 'void', reason = $2 WHERE serial = $1 AND status = 'reserved'`, ph, truncateStr(err.Error(), 200))
			return err
		})
		return err
	}
	serial := hex.EncodeToString(leaf.SerialNumber.Bytes())
	err = p.retry(ctx, "record", func(attempt int) error {
		return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `UPDATE certificates SET status = 'void', reason = $2 WHERE serial = $1 AND status = 'reserved'`,
				ph, "placeholder: the EST server issued serial "+serial)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				var dev, key, status string
				if attempt > 0 && tx.QueryRow(ctx, `SELECT device_id, key_sha256, status FROM certificates WHERE serial = $1`, serial).
					Scan(&dev, &key, &status) == nil && dev == r.DeviceID && key == r.KeySHA256 && status == StatusIssued {
					return nil // an earlier attempt committed; its reply was lost
				}
				_ = tx.QueryRow(ctx, `SELECT status FROM certificates WHERE serial = $1`, ph).Scan(&status)
				return fmt.Errorf("ledger: the reservation %s of %s is %s, not reserved (revoked meanwhile?): serial %s from the EST server is not recorded; revoke it at the EST CA",
					ph, r.DeviceID, status, serial)
			}
			_, err = tx.Exec(ctx, `INSERT INTO certificates (serial, device_id, key_sha256, status, station, reserved_at, issued_at,
				not_before, not_after, attestation, ek_sha256) VALUES ($1, $2, $3, 'issued', $4, $5, $6, $7, $8, $9, $10)`,
				serial, r.DeviceID, r.KeySHA256, r.Station, r.Time, time.Now().UTC(), leaf.NotBefore.UTC(), leaf.NotAfter.UTC(), r.Attestation, r.EKSHA256)
			return err
		})
	})
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == "certificates_pkey" {
		return fmt.Errorf("%w: serial %s from the EST server (the reservation %s stays reserved: devid-jig ledger pending)", ErrSerialTaken, serial, ph)
	}
	return err
}

// IssuedSerial returns the row of serial (void placeholders excluded).
func (p *pgLedger) IssuedSerial(ctx context.Context, serial string) (Record, error) {
	recs, err := p.records(ctx, "read", `SELECT `+certColumns+` FROM certificates WHERE serial = $1 AND status <> 'void'`, serial)
	if err != nil {
		return Record{}, err
	}
	if len(recs) == 0 {
		return Record{}, fmt.Errorf("serial %s: %w", serial, ErrNotIssued)
	}
	return recs[0], nil
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (p *pgLedger) reserve(ctx context.Context, r Record) error {
	return p.retry(ctx, "reserve", func(attempt int) error {
		err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			// Bind the device to this key; changing a binding fails on
			// the foreign key while a live certificate uses the old key.
			if _, err := tx.Exec(ctx, `INSERT INTO device_keys (device_id, key_sha256) VALUES ($1, $2)
				ON CONFLICT (device_id) DO UPDATE SET key_sha256 = EXCLUDED.key_sha256
				WHERE device_keys.key_sha256 <> EXCLUDED.key_sha256`, r.DeviceID, r.KeySHA256); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO certificates (serial, device_id, key_sha256, status, station, reserved_at,
				not_before, not_after, attestation, ek_sha256, reason) VALUES ($1, $2, $3, 'reserved', $4, $5, $6, $7, $8, $9, $10)`,
				r.Serial, r.DeviceID, r.KeySHA256, r.Station, r.Time, r.NotBefore, r.NotAfter, r.Attestation, r.EKSHA256, r.Reason)
			return err
		})
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return err
		}
		switch {
		case pe.Code == "23503" && pe.TableName == "certificates" || pe.Code == "23503" && pe.TableName == "device_keys":
			var serial, key string
			qerr := p.pool.QueryRow(ctx, `SELECT serial, key_sha256 FROM certificates WHERE device_id = $1 AND status IN ('reserved', 'issued')
				ORDER BY reserved_at LIMIT 1`, r.DeviceID).Scan(&serial, &key)
			if qerr != nil {
				return fmt.Errorf("%w: %s (%s)", ErrIDTaken, r.DeviceID, pe.Message)
			}
			return fmt.Errorf("%w: %s has serial %s for key sha256:%s; revoke it first", ErrIDTaken, r.DeviceID, serial, key)
		case pe.Code == "23505" && pe.ConstraintName == "certificates_pkey":
			if attempt > 0 {
				// An earlier attempt may have committed before its reply
				// was lost: the row is then ours.
				var dev, key, station string
				if qerr := p.pool.QueryRow(ctx, `SELECT device_id, key_sha256, station FROM certificates WHERE serial = $1`, r.Serial).
					Scan(&dev, &key, &station); qerr == nil && dev == r.DeviceID && key == r.KeySHA256 && station == r.Station {
					return nil
				}
			}
			return fmt.Errorf("%w: serial %s", ErrSerialTaken, r.Serial)
		}
		return fmt.Errorf("ledger reserve serial %s for %s: %w", r.Serial, r.DeviceID, err)
	})
}

func (p *pgLedger) Revoke(ctx context.Context, deviceID, station, reason string, at time.Time) ([]string, error) {
	var serials []string
	err := p.retry(ctx, "revoke", func(attempt int) error {
		serials = nil
		rows, err := p.pool.Query(ctx, `UPDATE certificates SET status = 'revoked', revoked_at = $2, revoked_by = $3, reason = $4
			WHERE device_id = $1 AND status IN ('reserved', 'issued') RETURNING serial`, deviceID, at, station, reason)
		if err != nil {
			return err
		}
		if serials, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		if len(serials) == 0 && attempt > 0 {
			// An earlier attempt may have committed before its reply was lost.
			rows, err := p.pool.Query(ctx, `SELECT serial FROM certificates WHERE device_id = $1 AND status = 'revoked'
				AND revoked_at = $2 AND revoked_by = $3`, deviceID, at, station)
			if err != nil {
				return err
			}
			serials, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(serials) == 0 {
		return nil, fmt.Errorf("revoke %s: %w", deviceID, ErrNotIssued)
	}
	sort.Strings(serials)
	return serials, nil
}

func (p *pgLedger) RevokeSerial(ctx context.Context, serial, station, reason string, at time.Time) error {
	return p.retry(ctx, "revoke", func(attempt int) error {
		tag, err := p.pool.Exec(ctx, `UPDATE certificates SET status = 'revoked', revoked_at = $2, revoked_by = $3, reason = $4
			WHERE serial = $1 AND status IN ('reserved', 'issued')`, serial, at, station, reason)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		if attempt > 0 {
			// An earlier attempt may have committed before its reply was lost.
			var n int
			if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM certificates WHERE serial = $1 AND status = 'revoked'
				AND revoked_at = $2 AND revoked_by = $3`, serial, at, station).Scan(&n); err != nil {
				return err
			}
			if n == 1 {
				return nil
			}
		}
		return fmt.Errorf("revoke serial %s: %w", serial, ErrNotIssued)
	})
}

func (p *pgLedger) Refuse(ctx context.Context, r Record) error {
	return p.retry(ctx, "refuse", func(int) error {
		_, err := p.pool.Exec(ctx, `INSERT INTO refusals (time, device_id, key_sha256, station, reason, attestation, ek_sha256)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, r.Time, r.DeviceID, r.KeySHA256, r.Station, r.Reason, r.Attestation, r.EKSHA256)
		return err
	})
}

const certColumns = `serial, device_id, key_sha256, status, station, reserved_at, not_before, not_after, attestation, ek_sha256, reason`

func (p *pgLedger) records(ctx context.Context, what, query string, args ...any) ([]Record, error) {
	var out []Record
	err := p.retry(ctx, what, func(int) error {
		rows, err := p.pool.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
			r := Record{V: LedgerVersion, Op: OpIssue}
			err := row.Scan(&r.Serial, &r.DeviceID, &r.KeySHA256, &r.Status, &r.Station, &r.Time, &r.NotBefore, &r.NotAfter, &r.Attestation, &r.EKSHA256, &r.Reason)
			r.Time, r.NotBefore, r.NotAfter = r.Time.UTC(), r.NotBefore.UTC(), r.NotAfter.UTC()
			return r, err
		})
		return err
	})
	return out, err
}

func (p *pgLedger) Issued(ctx context.Context, deviceID string) ([]Record, error) {
	return p.records(ctx, "read", `SELECT `+certColumns+` FROM certificates WHERE device_id = $1 AND status <> 'void'
		ORDER BY reserved_at, serial`, deviceID)
}

func (p *pgLedger) Pending(ctx context.Context) ([]Record, error) {
	return p.records(ctx, "read", `SELECT `+certColumns+` FROM certificates WHERE status = 'reserved' ORDER BY reserved_at, serial`)
}

func (p *pgLedger) Refused(ctx context.Context, deviceID string) ([]Record, error) {
	var out []Record
	err := p.retry(ctx, "read", func(int) error {
		rows, err := p.pool.Query(ctx, `SELECT time, device_id, key_sha256, station, reason, attestation, ek_sha256
			FROM refusals WHERE device_id = $1 ORDER BY id`, deviceID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
			r := Record{V: LedgerVersion, Op: OpRefuse, Serial: NoSerial}
			err := row.Scan(&r.Time, &r.DeviceID, &r.KeySHA256, &r.Station, &r.Reason, &r.Attestation, &r.EKSHA256)
			r.Time = r.Time.UTC()
			return r, err
		})
		return err
	})
	return out, err
}

func (p *pgLedger) Revoked(ctx context.Context) ([]Revocation, error) {
	var out []Revocation
	err := p.retry(ctx, "read", func(int) error {
		rows, err := p.pool.Query(ctx, `SELECT serial, device_id, revoked_at, reason FROM certificates WHERE status = 'revoked'`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Revocation, error) {
			var r Revocation
			err := row.Scan(&r.Serial, &r.DeviceID, &r.Time, &r.Reason)
			r.Time = r.Time.UTC()
			return r, err
		})
		return err
	})
	return out, err
}
