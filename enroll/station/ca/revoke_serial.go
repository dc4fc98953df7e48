package ca

import "fmt"

// RevokeSerial marks one certificate revoked in the ledger and rewrites
// the CRL: `devid-jig program --reissue` revokes the certificate it
// replaced on the board, and only that one (Revoke takes every
// certificate of a device ID, the new one included). Revoking a serial
// that is already revoked is not an error; one the ledger does not hold
// is ErrNotIssued.
func (l *Local) RevokeSerial(serial, reason string) error {
	if err := l.ledger.lock(); err != nil {
		return err
	}
	defer l.ledger.unlock()
	e := l.ledger.bySerial[serial]
	if e == nil {
		return fmt.Errorf("revoke serial %s: %w", serial, ErrNotIssued)
	}
	if e.Revoked {
		return nil
	}
	if err := l.ledger.append(Record{Op: OpRevoke, Time: l.Now().UTC(), Serial: serial, DeviceID: e.DeviceID, Station: l.station, Reason: reason}); err != nil {
		return err
	}
	return l.writeCRLLocked()
}

// SerialRevoked reports whether the ledger marks serial revoked; a serial
// the ledger does not hold is ErrNotIssued.
func (l *Local) SerialRevoked(serial string) (bool, error) {
	if err := l.ledger.lock(); err != nil {
		return false, err
	}
	defer l.ledger.unlock()
	e := l.ledger.bySerial[serial]
	if e == nil {
		return false, fmt.Errorf("serial %s: %w", serial, ErrNotIssued)
	}
	return e.Revoked, nil
}
