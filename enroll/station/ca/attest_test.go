package ca_test

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/station"
	"devid/enroll/station/ca"
)

var sanOID = asn1.ObjectIdentifier{2, 5, 29, 17}

// fakeSAN stands in for enroll/attest's HardwareModuleNameSAN.
func fakeSAN(hwType asn1.ObjectIdentifier, serial []byte) (pkix.Extension, error) {
	v, err := asn1.Marshal(struct {
		T asn1.ObjectIdentifier
		S []byte
	}{hwType, serial})
	return pkix.Extension{Id: sanOID, Value: v}, err
}

func TestIssueAttestedRecordsOutcome(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	ctx := context.Background()
	att := station.Attestation{Outcome: station.Attested, EKSHA256: strings.Repeat("ab", 32), HWType: asn1.ObjectIdentifier{1, 2, 3}, HWSerialNum: []byte{9, 9}}
	// Without a SAN builder an attested key is not issued at all.
	if _, err := l.IssueAttested(ctx, request(t, "att-1"), att); err == nil || !strings.Contains(err.Error(), "HardwareModuleName") {
		t.Fatalf("attested issue without a SAN builder: %v", err)
	}
	l.HardwareModuleNameSAN = fakeSAN
	chain, err := l.IssueAttested(ctx, request(t, "att-1"), att)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fakeSAN(att.HWType, att.HWSerialNum)
	var got []byte
	for _, e := range chain[0].Extensions {
		if e.Id.Equal(sanOID) {
			got = e.Value
		}
	}
	if !bytes.Equal(got, want.Value) {
		t.Fatalf("SAN %x, want %x", got, want.Value)
	}
	// A board that did not offer attestation: no SAN, outcome recorded.
	chain2, err := l.IssueAttested(ctx, request(t, "att-2"), station.Attestation{Outcome: station.NotOffered})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range chain2[0].Extensions {
		if e.Id.Equal(sanOID) {
			t.Fatal("SAN on a certificate for an unattested key")
		}
	}
	ref := station.Attestation{Outcome: station.RefusedPrefix + "nonce", Detail: "stale", EKSHA256: strings.Repeat("cd", 32)}
	if err := l.RecordRefusal(ctx, request(t, "att-3"), ref); err != nil {
		t.Fatal(err)
	}
	// Read back by a fresh process.
	l.Close()
	l2, err := ca.Open(dir, "st-2")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	r1, _ := l2.Issued("att-1")
	r2, _ := l2.Issued("att-2")
	r3, _ := l2.Refused("att-3")
	i3, _ := l2.Issued("att-3")
	if len(r1) != 1 || r1[0].Attestation != station.Attested || r1[0].EKSHA256 != att.EKSHA256 ||
		len(r2) != 1 || r2[0].Attestation != station.NotOffered || r2[0].EKSHA256 != "" ||
		len(r3) != 1 || r3[0].Attestation != "refused:nonce" || r3[0].Reason != "stale" || r3[0].EKSHA256 != ref.EKSHA256 ||
		r3[0].Serial != ca.NoSerial || r3[0].Op != ca.OpRefuse || len(i3) != 0 {
		t.Fatalf("ledger read back: %+v / %+v / %+v / %+v", r1, r2, r3, i3)
	}
	// A refusal does not hold the device ID: the same board may come back.
	if _, err := l2.IssueAttested(ctx, request(t, "att-3"), station.Attestation{Outcome: station.NotChecked}); err != nil {
		t.Fatal(err)
	}
}

// TestLedgerFromBeforeAttestation: records written before attestation
// existed (no attestation, no ek_sha256) still read, and the CA keeps
// issuing on them.
func TestLedgerFromBeforeAttestation(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	l.Close()
	old := `{"v":1,"op":"issue","time":"2026-11-29T02:46:01.42Z","serial":"70be91d9c3da549796f6cba8f3174e15","device_id":"board-0001","key_sha256":"a122","station":"jig-3","not_before":"2026-11-29T02:36:01Z","not_after":"2031-11-28T02:46:01Z"}
{"v":1,"op":"revoke","time":"2026-11-29T02:46:20Z","serial":"70be91d9c3da549796f6cba8f3174e15","device_id":"board-0001","station":"jig-3","reason":"rework"}
`
	if err := os.WriteFile(filepath.Join(dir, ca.LedgerFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	l2, err := ca.Open(dir, "st")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	recs, _ := l2.Issued("board-0001")
	if len(recs) != 1 || recs[0].Attestation != "" || recs[0].KeySHA256 != "a122" {
		t.Fatalf("old records: %+v", recs)
	}
	if _, err := l2.Issue(context.Background(), request(t, "board-0001")); err != nil {
		t.Fatalf("issue after old records: %v", err)
	}
}

func TestPolicyRequireTPMAttestation(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	if l.Policy().RequireTPMAttestation {
		t.Fatal("the default policy requires attestation")
	}
	l.Close()
	p := filepath.Join(dir, ca.PolicyFile)
	// A policy file from before attestation (no such key) still loads.
	base := "validity = \"24h\"\nbackdate = \"0s\"\nallowed_id = 'x.*'\ncrl_validity = \"1h\"\n"
	os.WriteFile(p, []byte(base), 0o644)
	if pol, err := ca.LoadPolicy(p); err != nil || pol.RequireTPMAttestation {
		t.Fatalf("old policy: %+v %v", pol, err)
	}
	os.WriteFile(p, []byte(base+"require_tpm_attestation = \"yes\"\n"), 0o644)
	if _, err := ca.LoadPolicy(p); err == nil || !strings.Contains(err.Error(), "CA policy") {
		t.Fatalf("require_tpm_attestation not a boolean: %v", err)
	}
	os.WriteFile(p, []byte(base+"require_tpm_attestation = true\n"), 0o644)
	l2, err := ca.Open(dir, "st")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	l2.HardwareModuleNameSAN = fakeSAN
	ctx := context.Background()
	if _, err := l2.Issue(ctx, request(t, "x-1")); !errors.Is(err, ca.ErrPolicy) {
		t.Fatalf("plain Issue under require_tpm_attestation: %v", err)
	}
	if _, err := l2.IssueAttested(ctx, request(t, "x-2"), station.Attestation{Outcome: station.NotOffered}); !errors.Is(err, ca.ErrPolicy) {
		t.Fatalf("unattested under require_tpm_attestation: %v", err)
	}
	if r, _ := l2.Refused("x-2"); len(r) != 1 || r[0].Attestation != "refused:policy" {
		t.Fatalf("policy refusal record %+v", r)
	}
	if _, err := l2.IssueAttested(ctx, request(t, "x-3"), station.Attestation{Outcome: station.Attested, HWType: asn1.ObjectIdentifier{1, 2}, HWSerialNum: []byte{1}}); err != nil {
		t.Fatal(err)
	}
}
