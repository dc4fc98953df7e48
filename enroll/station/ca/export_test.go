package ca

// SetAfterSign installs a hook that runs between signing a certificate
// and finalizing its ledger record (the crash tests stop there).
func SetAfterSign(l *Local, f func(der []byte)) { l.afterSign = f }

// LedgerOf is the ledger behind l.
func LedgerOf(l *Local) Ledger { return l.ledger }
