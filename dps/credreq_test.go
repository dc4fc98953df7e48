package dps

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
	"devid/simulator/simtest"
)

func TestRequestActiveErrorParse(t *testing.T) {
	body := []byte(`{"errorCode":409005,"message":"busy","trackingId":"t","timestampUtc":"x","info":{"requestId":"cert00000001","operationExpires":"2026-06-09T17:31:31.426Z"}}`)
	err := requestActive(parseStatusError("hub certificate request", Response{Status: 409}, body))
	var ra *RequestActiveError
	if !errors.As(err, &ra) || !errors.Is(err, ErrRequestActive) || !errors.Is(err, ErrStatus) || !Retryable(err) {
		t.Fatalf("409005 = %#v; want a retryable *RequestActiveError that is also ErrStatus", err)
	}
	if want := time.Date(2026, 6, 9, 17, 31, 31, 426e6, time.UTC); ra.RequestID != "cert00000001" || !ra.Expires.Equal(want) {
		t.Errorf("request %q expires %v; want cert00000001 %v", ra.RequestID, ra.Expires, want)
	}
	other := requestActive(parseStatusError("hub certificate request", Response{Status: 409}, []byte(`{"errorCode":409001}`)))
	if errors.Is(other, ErrRequestActive) {
		t.Errorf("409001 matched ErrRequestActive: %v", other)
	}
}

// TestCertificateRequestAfterReboot: a request sent before the device
// lost its connection is still active on the hub; asking again meets
// *RequestActiveError with the hub's expiry, and Replace "*" takes over.
func TestCertificateRequestAfterReboot(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	const id = "dev-credreq"
	res, cred := r.register(t, id)
	hc := r.hubConfig(res, cred)
	hc.CertificateRenewal = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		t.Fatal(err)
	}

	// Hold the hub's 200 so the first request stays active.
	fid := r.sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: id, Ops: []string{"credentials"}, DelayMs: 3600000})
	h, err := ConnectHub(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { _, err := h.RequestCertificate(ctx, csr); first <- err }()
	if !clocktest.Poll(20*time.Second, func() bool { // the hub has answered 202
		var fs []simtest.Fault
		r.sim.MustDo(http.MethodGet, "/sim/faults", nil, &fs)
		return len(fs) == 1 && fs[0].ID == fid && fs[0].Applied > 0
	}) {
		t.Fatal("the first certificate request never reached the hub")
	}
	h.Close() // the reboot
	if err := <-first; err == nil {
		t.Fatal("the first request returned a chain though its answer was held")
	}

	h2, err := ConnectHub(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	_, err = h2.RequestCertificate(ctx, csr)
	var ra *RequestActiveError
	if !errors.As(err, &ra) || ra.RequestID == "" || time.Until(ra.Expires) <= 0 {
		t.Fatalf("second request: %v; want *RequestActiveError naming the first request and a future expiry", err)
	}
	r.sim.ClearFaults(t)
	chain, err := h2.RequestCertificateWithOptions(ctx, csr, CertificateRequestOptions{Replace: "*"})
	if err != nil {
		t.Fatalf("request with replace *: %v", err)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Errorf("issued certificate does not carry the CSR's key")
	}
}
