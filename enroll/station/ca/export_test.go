package ca

// SetAfterSign installs a hook that runs between signing a certificate
// and finalizing its ledger record (the crash tests stop there).
func SetAfterSign(l *Local, f func(der []byte)) { l.afterSign = f }

// LedgerOf is the ledger behind l.
func LedgerOf(l *Local) Ledger { return l.ledger }

// LedgerRetries is how many PostgreSQL ledger attempts l repeated because
// the database did not answer (0 for the file ledger).
func LedgerRetries(l *Local) int64 {
	if p, ok := l.ledger.(*pgLedger); ok {
		return p.retries.Load()
	}
	return 0
}
