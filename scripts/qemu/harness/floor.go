package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/csr"
	"devid/enroll/station/ca"
)

// The footprint baseline on the board (make bench, docs/benchmarks.md):
// scripts/bench.d/mqttfloor, the least Go device client on the agent's
// stack, connected to the same hub as the agent with an identity of its
// own from the same factory CA. Its files sit on the flash under bench/,
// where boardinit's "floor" control command finds them.
const (
	floorDevice = "floor-board"
	floorDir    = "bench" // in the flash
)

// writeFloor puts the baseline client and its identity into the flash
// source: the binary, a fresh P-256 key and its chain issued by the CA
// in caDir.
func writeFloor(ctx context.Context, flashSrc, floorBin, caDir string) error {
	dir := filepath.Join(flashSrc, floorDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	bin, err := os.ReadFile(floorBin)
	if err != nil {
		return fmt.Errorf("baseline client: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mqttfloor"), bin, 0o755); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := csr.Create(key, floorDevice)
	if err != nil {
		return err
	}
	req, err := csr.Parse(der)
	if err != nil {
		return err
	}
	c, err := ca.Open(caDir, "qemu-bench")
	if err != nil {
		return fmt.Errorf("factory CA: %w", err)
	}
	chain, err := c.Issue(ctx, req)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("issue the baseline client's certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "floor.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "floor-chain.pem"), certstore.EncodePEM(chain...), 0o644)
}

// floorRSS registers the baseline client's device on hub (CA-signed
// authentication, as DPS would have), has the board run the client
// connected to it and idle, and returns boardinit's answer: its
// /proc/PID/status figures.
func floorRSS(ctx context.Context, s *sim, b *board, hub string) (string, error) {
	guest := ""
	for i, h := range s.ready.Hubs {
		if strings.EqualFold(h.Host, hub) {
			guest = guestHubAddr(i)
		}
	}
	if guest == "" {
		return "", fmt.Errorf("hub %s is not one of the simulator's", hub)
	}
	body := map[string]any{"deviceId": floorDevice, "status": "enabled",
		"authentication": map[string]any{"type": "certificateAuthority"}}
	if _, err := s.call(ctx, "PUT", "/hubs/"+url.PathEscape(hub)+"/devices/"+floorDevice, body, nil); err != nil {
		return "", fmt.Errorf("create the baseline client's device: %w", err)
	}
	ans, err := b.controlWithin(ctx, fmt.Sprintf("floor %s %s %s", guest, hub, floorDevice), time.Minute)
	if err != nil || !strings.HasPrefix(ans, "ok ") {
		return "", fmt.Errorf("floor: %q %v (console: %s)", ans, err, b.tail(6))
	}
	return strings.TrimPrefix(ans, "ok "), nil
}
