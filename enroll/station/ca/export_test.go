package ca

// SetAfterSign installs a hook that runs between signing a certificate
// and finalizing its ledger record (the crash tests stop there).
func SetAfterSign(l *Local, f func(der []byte)) { l.afterSign = f }
