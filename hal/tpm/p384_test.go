package tpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"devid/hal/tpm/tpmtest"
)

// TestCreateP384 makes an ECC NIST P-384 key on swtpm, with both
// creation commands, and checks that it signs SHA-384 (and SHA-256)
// digests that verify, and keeps the non-exportable attributes.
func TestCreateP384(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"CreateLoaded", nil},
		{"Create+Load", []Option{WithoutCreateLoaded()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sw := tpmtest.Start(t)
			tp := openT(t, sw.Addr(), tc.opts...)
			k := newKeyCurve(t, tp, elliptic.P384())
			b := k.Blob()
			if c := k.Public().(*ecdsa.PublicKey).Curve; c != elliptic.P384() {
				t.Fatalf("key curve %s, want P-384", c.Params().Name)
			}
			for _, h := range []crypto.Hash{crypto.SHA384, crypto.SHA256} {
				signVerify(t, k, h)
			}
			p2b, _ := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
			pub, _ := p2b.Contents()
			if a := pub.ObjectAttributes; !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
				t.Errorf("attributes %+v: not non-exportable", a)
			}
			// The blob survives a PEM round trip with its curve.
			pemb, err := b.MarshalPEM()
			if err != nil {
				t.Fatal(err)
			}
			b2, err := ParseBlobPEM(pemb)
			if err != nil {
				t.Fatal(err)
			}
			if pk, err := b2.publicKey(); err != nil || !pk.Equal(k.Public()) {
				t.Fatalf("blob after PEM round trip: %v", err)
			}
		})
	}
	if _, err := SigningKeyTemplateFor(elliptic.P521()); !errors.Is(err, ErrCurveUnsupported) {
		t.Errorf("P-521 template: %v, want ErrCurveUnsupported", err)
	}
}
