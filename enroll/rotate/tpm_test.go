package rotate

import (
	"context"
	"testing"
	"time"

	_ "devid/enroll/keys/tpmkey" // registers the "tpm" backend
	"devid/hal/tpm/tpmtest"
)

// TestTPMKeyRotation rotates a key held in a (software) TPM: the staged
// key is a second blob on the same TPM, promoted by rename; kill -9 at
// every step leaves a key that loads into the TPM and connects.
func TestTPMKeyRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs swtpm")
	}
	t.Parallel()
	sw := tpmtest.Start(t)
	spec := func(string) string { return "tpm:" + sw.Addr() }

	dir := t.TempDir()
	ca := newTestCA(t, realNow, 24*time.Hour)
	slot := provisionSpec(t, dir, ca, spec(dir))
	old := mustLoad(t, slot, dir)
	r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), NewKey: true, Roots: ca.roots()}
	w := &Renewer{Rotator: r, Policy: DefaultPolicy()}
	done := make(chan Result, 1)
	w.OnRotated = func(res Result) { done <- res }
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.Run(ctx)
	// The direct method, as an operator would call it.
	if code, body := w.HandleMethod([]byte(`{"rotate_key":true}`)); code != 202 {
		t.Fatalf("rotateCredential: %d %s", code, body)
	}
	select {
	case res := <-done:
		if !res.NewKey {
			t.Errorf("result %+v", res)
		}
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	checkRecovered(t, dir, slot, ca, old, true, "TPM rotation by direct method")
	cancel()

	kill9AtEveryStep(t, true, spec)
}
