package rotate

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"testing"
	"time"

	"devid/enroll/keys"
	"devid/hal/tpm/tpmtest"
)

// TestTPMKeyRotationP384: with ",curve=p384" on a TPM key spec the staged
// key is an ECC NIST P-384 key in the (software) TPM; its CSR verifies
// (SHA-384), and the rotated credential does a TLS handshake, which signs
// through the TPM.
func TestTPMKeyRotationP384(t *testing.T) {
	if testing.Short() {
		t.Skip("runs swtpm")
	}
	t.Parallel()
	sw := tpmtest.Start(t)
	dir := t.TempDir()
	ca := newTestCA(t, realNow, 24*time.Hour)
	slot := provisionSpec(t, dir, ca, "tpm:"+sw.Addr()+",curve=p384")
	old := mustLoad(t, slot, dir)
	if c := old.Signer.Public().(*ecdsa.PublicKey).Curve; c != elliptic.P384() {
		t.Fatalf("provisioned key is %s, want P-384", c.Params().Name)
	}
	r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: true, Roots: ca.roots()}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := r.Rotate(ctx)
	if err != nil || !res.NewKey {
		t.Fatalf("rotate: %+v, %v", res, err)
	}
	c, err := LoadCredential(slot, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close(c.Signer)
	pub := c.Signer.Public().(*ecdsa.PublicKey)
	if pub.Curve != elliptic.P384() || pub.Equal(old.Signer.Public()) {
		t.Fatalf("rotated key: curve %s, new %v; want a new P-384 key", pub.Curve.Params().Name, !pub.Equal(old.Signer.Public()))
	}
	if err := handshake(ca, c); err != nil {
		t.Fatalf("P-384 TPM credential: %v", err)
	}
}
