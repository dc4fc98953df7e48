package jig

import (
	"encoding/hex"
	"testing"
)

// FuzzEKSHA256: the EK fingerprint is taken from a statement the board
// sent, before the Verifier has looked at it. Any input is either a
// fingerprint or "", never a panic.
func FuzzEKSHA256(f *testing.F) {
	f.Add([]byte(`{"x5c":["AQID"]}`))
	f.Add([]byte(`{"x5c":[]}`))
	f.Add([]byte(`{"x5c":[""],"sig":"x"}`))
	f.Add([]byte(`{"x5c":"AQID"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := ekSHA256(b)
		if s == "" {
			return
		}
		if d, err := hex.DecodeString(s); err != nil || len(d) != 32 {
			t.Fatalf("fingerprint %q", s)
		}
	})
}
