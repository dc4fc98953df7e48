package rotate

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"testing"
	"time"
)

// TestDPSIssuanceP384OnSim: the operational key spec asks for P-384
// (",curve=p384"); the first issuance and a key rotation both make P-384
// keys, DPS (the simulator accepts P-384 CSRs by default) issues for them,
// and the credential connects to the hub.
func TestDPSIssuanceP384OnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	d := newSimDevice(t, "rot-dps-384")
	d.slot.KeySpec += ",curve=p384"
	d.rot.Slot = d.slot
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var serial string
	for i := range 2 {
		res, err := d.rot.Rotate(ctx)
		if err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if res.Serial == serial {
			t.Fatalf("rotation %d kept serial %s", i, serial)
		}
		serial = res.Serial
		c, err := LoadCredential(d.slot, d.dir)
		if err != nil {
			t.Fatal(err)
		}
		pub, ok := c.Signer.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P384() {
			t.Fatalf("rotation %d: key is %T, want ECDSA P-384", i, c.Signer.Public())
		}
		if !pub.Equal(c.Leaf().PublicKey) {
			t.Fatalf("rotation %d: certificate does not certify the P-384 key", i)
		}
		if err := d.connect(ctx, c); err != nil {
			t.Fatalf("rotation %d: P-384 credential does not connect: %v", i, err)
		}
	}
}

func TestDefaultStagedSpecKeepsCurve(t *testing.T) {
	t.Parallel()
	got, err := DefaultStagedSpec("file", []string{"/s/op.key"})("file:/s/op.key,curve=p384")
	if want := "file:/s/op.key" + StagedSuffix + ",curve=p384"; err != nil || got != want {
		t.Fatalf("staged spec %q, %v; want %q", got, err, want)
	}
	got, err = DefaultStagedSpec("file", []string{"/s/op.key"})("file:/s/op.key")
	if want := "file:/s/op.key" + StagedSuffix; err != nil || got != want {
		t.Fatalf("staged spec %q, %v; want %q", got, err, want)
	}
}
