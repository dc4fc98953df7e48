package jig_test

// The factory programming flow with the device key in a TPM (swtpm),
// over the same pty and real tarm/serial port as the software-key tests.
// Owned by the tpm helper; it uses this package's test helpers (newCA,
// rootPool, testCtx).

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/enroll/keys/tpmkey"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
	"devid/hal/tpm/tpmtest"
)

func TestProgramOverPtyTPM(t *testing.T) {
	t.Parallel()
	sw := tpmtest.Start(t)
	l := newCA(t)
	pair := serialtest.Pty(t)
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("tpm:"+sw.Addr(), state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: "board-tpm-0001", Keys: ks, Certs: certstore.Open(state, rootPool(l)),
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	p, err := serial.Open(pair.TTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, p) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Serve returned %v, want context.Canceled", err)
		}
		p.Close()
	})

	res, err := jig.Program(testCtx(t), jig.New(pair.Master), l, nil)
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
