package simulator_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"devid/simulator"
	"devid/simulator/simapi"
	"devid/simulator/simtest"
)

func signCRL(t *testing.T, ca *x509.Certificate, key crypto.Signer, serials ...*big.Int) string {
	t.Helper()
	now := time.Now()
	l := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}
	for _, s := range serials {
		l.RevokedCertificateEntries = append(l.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: now.Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, l, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
}

func TestRevokeByCRL(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca, other := simtest.NewDeviceCA(t), simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "crl-a", ca.Root)
	sim.EnrollGroup(t, "crl-b", other.Root)
	h := sim.Hub("")
	connect := func(t *testing.T, d *simtest.DeviceCert, id string) (*mqttClient, error) {
		t.Helper()
		return dialMQTT(t, h.Addr, id, hubUser(h, id), sim.TLSConfig(h.Host, d.TLSCertificate()), true)
	}
	victim := ca.Issue(t, "crl-victim")
	// Same serial, different CA: a CRL from ca must not touch it.
	bystander := other.Issue(t, "crl-bystander", func(c *x509.Certificate) { c.SerialNumber = victim.Leaf.SerialNumber })
	for _, d := range []*simtest.DeviceCert{victim, bystander} {
		if st := register(t, sim, d, ""); st.Status != "assigned" {
			t.Fatalf("register %s: %+v", d.Leaf.Subject.CommonName, st)
		}
	}
	c, err := connect(t, victim, "crl-victim")
	if err != nil {
		t.Fatal(err)
	}
	crl := signCRL(t, ca.Intermediate, ca.IntermediateKey, victim.Leaf.SerialNumber)
	// The CRL signer (the intermediate) chains to the group's root.
	req := simapi.RevokeRequest{CRL: crl, Chain: string(simtest.PEM(ca.Intermediate))}
	sim.MustDo("POST", "/sim/revoke", req, nil)
	c.waitLost()
	if _, err := connect(t, victim, "crl-victim"); !isNotAuthorized(err) {
		t.Fatalf("revoked device: %v, want CONNACK 5", err)
	}
	wantDPSError(t, dpsOnce(t, sim, victim, "crl-victim", dpsUser(sim, "crl-victim"), `{"registrationId":"crl-victim"}`), "401", 401002)
	if bc, err := connect(t, bystander, "crl-bystander"); err != nil {
		t.Fatalf("same serial under another CA refused: %v", err)
	} else {
		bc.c.Disconnect(0)
	}
	// Idempotent.
	var before, after []map[string]any
	sim.MustDo("GET", "/sim/revoked", nil, &before)
	sim.MustDo("POST", "/sim/revoke", req, nil)
	sim.MustDo("GET", "/sim/revoked", nil, &after)
	if len(before) != 1 || len(after) != 1 {
		t.Fatalf("revoked list %v then %v, want one entry", before, after)
	}

	stranger := simtest.NewDeviceCA(t)
	for name, body := range map[string]any{
		"unknown CA":   simapi.RevokeRequest{CRL: signCRL(t, stranger.Intermediate, stranger.IntermediateKey, big.NewInt(7))},
		"garbage CRL":  simapi.RevokeRequest{CRL: "not a CRL"},
		"wrong PEM":    simapi.RevokeRequest{CRL: string(simtest.PEM(ca.Root))},
		"bad chain":    simapi.RevokeRequest{CRL: crl, Chain: "nope"},
		"not JSON":     "x",
		"empty object": map[string]any{},
	} {
		st, err := sim.Do("POST", "/sim/revoke", body, nil)
		if st != http.StatusBadRequest || err == nil {
			t.Errorf("%s: %d %v, want 400", name, st, err)
		}
		if name == "unknown CA" && (err == nil || !strings.Contains(err.Error(), "verifies against none")) {
			t.Errorf("unknown CA: %v, want the signature problem named", err)
		}
	}
}

func FuzzParseCRL(f *testing.F) {
	ca := simtest.NewDeviceCA(f)
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(42), RevocationTime: now}}}, ca.Intermediate, ca.IntermediateKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))
	f.Add([]byte("MIIB"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := simulator.ParseCRL(b)
		if err == nil && l == nil {
			t.Fatal("nil CRL without error")
		}
		if err == nil && bytes.Equal(b, der) && len(l.RevokedCertificateEntries) != 1 {
			t.Fatal("seed CRL lost its entry")
		}
	})
}
