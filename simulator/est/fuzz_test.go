package est

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.mozilla.org/pkcs7"
)

// testCA is a self-signed issuer and a client certificate for subject
// CN=dev-1 issued by it.
func testCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "est fuzz CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	ckey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cder, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dev-1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, ca, &ckey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	client, _ := x509.ParseCertificate(cder)
	return ca, key, client
}

func csrB64(t testing.TB, cn string) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// TestEnrollBodyTooLarge: a request body over the limit is refused as
// too large, not cut and then reported as "not base64".
func TestEnrollBodyTooLarge(t *testing.T) {
	t.Parallel()
	ca, key, client := testCA(t)
	s, _ := New(Config{Issuer: ca, Key: key})
	body := csrB64(t, "dev-1") + strings.Repeat("\n", 70<<10)
	rec := serve(s, "simpleenroll", "application/pkcs10", []byte(body), client)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "64 KiB") {
		t.Fatalf("oversized body: %d %q, want 413 naming the limit", rec.Code, rec.Body.String())
	}
}

func serve(s *Server, op, ctype string, body []byte, client *x509.Certificate) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "https://est.example/.well-known/est/"+op, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	if client != nil {
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{client}, VerifiedChains: [][]*x509.Certificate{{client}}}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

// FuzzEnroll feeds arbitrary request bodies (and paths and content
// types) to the EST server: no panic; a 200 only for a CSR whose
// signature holds (and, on re-enrollment, whose subject is the client's),
// answered with a certs-only PKCS#7 holding one certificate for the CSR's
// key; every refusal says why.
func FuzzEnroll(f *testing.F) {
	ca, key, client := testCA(f)
	s, err := New(Config{Issuer: ca, Key: key})
	if err != nil {
		f.Fatal(err)
	}
	good := csrB64(f, "dev-1")
	for _, op := range []string{"simpleenroll", "simplereenroll"} {
		f.Add(op, "application/pkcs10", []byte(good))
		f.Add(op, "application/pkcs10; charset=utf-8", []byte(good[:40]+"\r\n"+good[40:]))
		f.Add(op, "application/pkcs10", []byte(csrB64(f, "other")))
	}
	f.Add("simpleenroll", "text/plain", []byte(good))
	f.Add("simpleenroll", "application/pkcs10", []byte("not base64!"))
	f.Add("simpleenroll", "application/pkcs10", []byte(base64.StdEncoding.EncodeToString([]byte("not DER"))))
	f.Add("label/simpleenroll", "application/pkcs10", []byte(""))
	f.Add("cacerts", "", []byte(""))
	f.Fuzz(func(t *testing.T, op, ctype string, body []byte) {
		if _, err := url.Parse("https://est.example/.well-known/est/" + op); err != nil || strings.ContainsAny(op, "?# %") || strings.ContainsAny(ctype, "\r\n") {
			return // not a path or header a client can send
		}
		rec := serve(s, op, ctype, body, client)
		if rec.Code != http.StatusOK {
			if rec.Body.Len() == 0 {
				t.Fatalf("%s: status %d without a reason", op, rec.Code)
			}
			return
		}
		if !strings.HasSuffix(op, "enroll") {
			t.Fatalf("POST %s answered 200", op)
		}
		der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(rec.Body.String(), "\r\n", ""))
		if err != nil {
			t.Fatalf("200 body is not base64: %v", err)
		}
		p7, err := pkcs7.Parse(der)
		if err != nil || len(p7.Certificates) != 1 {
			t.Fatalf("200 body is not a one-certificate PKCS#7: %v", err)
		}
		csrDER, _ := base64.StdEncoding.DecodeString(strings.Map(func(c rune) rune {
			if c == '\r' || c == '\n' || c == ' ' {
				return -1
			}
			return c
		}, string(body)))
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil || csr.CheckSignature() != nil {
			t.Fatalf("issued for a body that is not a well-signed CSR: %v", err)
		}
		leaf := p7.Certificates[0]
		if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
			t.Fatal("issued certificate is not for the CSR's key")
		}
		if strings.HasSuffix(op, "simplereenroll") && !bytes.Equal(csr.RawSubject, client.RawSubject) {
			t.Fatal("re-enrolled a CSR whose subject is not the client's")
		}
	})
}
