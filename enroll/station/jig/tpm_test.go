package jig_test

// The factory programming flow with the device key in a TPM (swtpm),
// over the same pty and real tarm/serial port as the software-key tests.
// It uses this package's test helpers (newCA, rootPool, testCtx,
// serveTPMBoard).

import (
	"crypto/ecdsa"
	"io"
	"os"
	"testing"

	"devid/enroll/certstore"
	"devid/enroll/keys/tpmkey"
	"devid/enroll/station/jig"
	"devid/hal/tpm/tpmtest"
)

func TestProgramOverPtyTPM(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	l := newCA(t)
	j, d, state := serveTPMBoard(t, sw.Addr(), "board-tpm-0001", rootPool(l), false)
	ks := d.Keys

	res, err := jig.Program(testCtx(t), j, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Key != "tpm" || res.DeviceID != "board-tpm-0001" {
		t.Fatalf("result %+v, want key backend tpm", res)
	}
	// Only the TPM key blob and the chain are stored; no private key file.
	ents, _ := os.ReadDir(state)
	for _, e := range ents {
		if e.Name() != tpmkey.DefaultBlobFile && e.Name() != certstore.ChainFile {
			t.Errorf("unexpected file %s in the state dir", e.Name())
		}
	}

	// Power-cycle the TPM: the key still loads and still matches the
	// installed certificate.
	sw.Restart()
	key, err := ks.Load()
	if err != nil {
		t.Fatal(err)
	}
	defer key.(io.Closer).Close()
	chain, err := d.Certs.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !chain.Matches(key.Public()) || !chain.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("installed certificate does not match the TPM key")
	}
}
