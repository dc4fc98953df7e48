package ca

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
)

// normSerial is serial (hex) as the ledger keeps it: the serial's bytes
// in lowercase hex, even length.
func normSerial(serial string) (string, error) {
	sn, ok := new(big.Int).SetString(serial, 16)
	if !ok || sn.Sign() <= 0 {
		return "", fmt.Errorf("serial %q: not a positive hexadecimal serial number", serial)
	}
	return hex.EncodeToString(sn.Bytes()), nil
}

// SerialRevoked reports whether the ledger marks serial revoked (a
// serial it does not list as revoked is not). `devid-jig program` asks
// before it leaves a programmed board alone.
func (l *Local) SerialRevoked(serial string) (bool, error) {
	serial, err := normSerial(serial)
	if err != nil {
		return false, err
	}
	revoked, err := l.ledger.Revoked(context.Background())
	if err != nil {
		return false, err
	}
	for _, r := range revoked {
		if r.Serial == serial {
			return true, nil
		}
	}
	return false, nil
}
