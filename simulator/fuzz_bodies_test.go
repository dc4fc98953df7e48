package simulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// fuzzCSR is a base64 DER CSR for cn on curve.
func fuzzCSR(t testing.TB, cn string, curve elliptic.Curve) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(curve, rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// fuzzIssuer is an issuer on a fresh PKI.
func fuzzIssuer(t testing.TB) *issuer {
	t.Helper()
	pki, err := LoadOrCreatePKI(t.TempDir(), []string{"localhost"}, "ecdsa")
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{pki: pki, curves: "P-256,P-384", validity: 24 * 60 * 60 * 1e9}
}

// checkIssued fails unless chain (base64 DER, leaf first) is a
// certificate for cn and the public key of the CSR b64.
func checkIssued(t *testing.T, chain []string, b64, cn string) {
	t.Helper()
	der, _ := base64.StdEncoding.DecodeString(chain[0])
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("issued leaf does not parse: %v", err)
	}
	csrDER, _ := base64.StdEncoding.DecodeString(b64)
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("issued for a CSR that does not hold: %v", err)
	}
	if leaf.Subject.CommonName != cn || !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
		t.Fatalf("issued CN %q for %q, or for another key", leaf.Subject.CommonName, cn)
	}
}

// FuzzDPSRegisterBody feeds arbitrary register bodies (and registration
// ids) to the DPS decoder and, when a csr is present, to the issuer: no
// panic; an accepted body names the same registration id (any case),
// carries a JSON object or no payload, and a certificate is issued only
// for a well-signed CSR of that id on an accepted curve.
func FuzzDPSRegisterBody(f *testing.F) {
	iss := fuzzIssuer(f)
	csr := fuzzCSR(f, "dev-1", elliptic.P256())
	for _, s := range []string{
		`{"registrationId":"dev-1"}`,
		`{"registrationId":"DEV-1","payload":{"modelId":"dtmi:x;1"}}`,
		`{"registrationId":"dev-1","payload":null,"csr":"` + csr + `"}`,
		`{"registrationId":"dev-1","csr":"` + fuzzCSR(f, "dev-1", elliptic.P521()) + `"}`,
		`{"registrationId":"dev-1","csr":"` + fuzzCSR(f, "other", elliptic.P256()) + `"}`,
		`{"registrationId":"dev-1","csr":"-----BEGIN CERTIFICATE REQUEST-----"}`,
		`{"registrationId":"dev-1","payload":[1]}`,
		`{"registrationId":"dev-2"}`,
		`{} {}`,
		`{"registrationId":null}`,
		``,
	} {
		f.Add("dev-1", []byte(s))
	}
	f.Add("bad id!", []byte(`{}`))
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		// Both --empty-register-body modes: "reject" must refuse what
		// "accept" refuses, and more.
		if _, e := decodeRegister(body, id, "reject"); e == nil && len(bytes.TrimSpace(body)) == 0 {
			t.Fatalf("reject mode accepted an empty body")
		}
		rb, e := decodeRegister(body, id, "accept")
		if e != nil {
			return
		}
		if ValidRegistrationID(id) != nil {
			t.Fatalf("accepted registration id %q", id)
		}
		if rb.RegistrationID != nil && !strings.EqualFold(*rb.RegistrationID, id) {
			t.Fatalf("accepted body id %q for %q", *rb.RegistrationID, id)
		}
		if len(rb.Payload) > 0 {
			var m map[string]any
			if json.Unmarshal(rb.Payload, &m) != nil || m == nil {
				t.Fatalf("accepted payload %s", rb.Payload)
			}
		}
		if rb.CSR != nil {
			if chain, err := iss.fromCSR(*rb.CSR, id, 0); err == nil {
				checkIssued(t, chain, *rb.CSR, id)
			}
		}
	})
}

// FuzzHubRequestBody feeds arbitrary device payloads to the hub's body
// decoders: the reported-properties patch (merged into a twin, which
// must stay storable JSON) and the certificate-renewal request (whose csr
// goes to the issuer). No panic; nothing over 32 KB or not an object is
// merged; a certificate only for a well-signed CSR of the device.
func FuzzHubRequestBody(f *testing.F) {
	iss := fuzzIssuer(f)
	for _, s := range []string{
		`{"fw":"1.2","sensors":{"t1":"ok","t2":null},"$version":9}`,
		`{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`,
		`{"a":null}`,
		`[1,2]`, `null`, `"x"`, `{}`,
		`{"id":"dev-1","csr":"` + fuzzCSR(f, "dev-1", elliptic.P256()) + `"}`,
		`{"id":"dev-1","csr":"` + fuzzCSR(f, "dev-1", elliptic.P384()) + `","replace":"*"}`,
		`{"id":"dev-1","csr":"AAAA"}`,
		`{"id":"other","csr":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Add(bytes.Repeat([]byte(`{"a":`), 1000))
	f.Fuzz(func(t *testing.T, payload []byte) {
		twin := map[string]any{"keep": "me", "sensors": map[string]any{"t2": "ok"}}
		if patch, bad := decodeReportedPatch(payload); bad == "" {
			if len(payload) > hubMaxTwin || patch == nil {
				t.Fatalf("accepted a patch of %d bytes", len(payload))
			}
			if _, ok := patch["$version"]; ok {
				t.Fatal("$version of the device kept in the patch")
			}
			mergePatch(twin, patch)
			if _, err := json.Marshal(twin); err != nil {
				t.Fatalf("merged twin is not storable: %v", err)
			}
		}
		var req credRequest
		if json.Unmarshal(payload, &req) == nil && req.ID == "dev-1" {
			if chain, err := iss.fromCSR(req.CSR, req.ID, 0); err == nil {
				checkIssued(t, chain, req.CSR, req.ID)
			}
		}
	})
}

// controlRoutes are the control-plane calls that take a body.
var controlRoutes = []struct{ method, path string }{
	{"PUT", "/enrollmentGroups/fz-g"},
	{"PUT", "/enrollments/fz-d"},
	{"POST", "/enrollments/query"},
	{"POST", "/registrations/fz-g/query"},
	{"PUT", "/devices/fz-d"},
	{"PATCH", "/twins/fz-d"},
	{"PUT", "/twins/fz-d"},
	{"POST", "/twins/fz-nobody/methods"},
	{"POST", "/devices/fz-d/messages/deviceBound"},
	{"POST", "/sim/c2d"},
	{"POST", "/sim/revoke"},
	{"POST", "/sim/faults"},
	{"PATCH", "/sim/hubs/sim-hub-1"},
	{"POST", "/sim/disconnect"},
}

// FuzzControlBody sends arbitrary JSON bodies to every control-plane call
// that takes one, on a running simulator: no panic (the handler's
// recover turns one into a 500) and no internal error; every refusal is
// the service's error body with an errorCode.
func FuzzControlBody(f *testing.F) {
	sim, err := StartArgs([]string{"--state", f.TempDir(), "--server-key", "ecdsa"}, io.Discard)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sim.Close() })
	h := sim.controlHandler()
	seeds := []string{
		`{}`, `null`, `[]`, `{"attestation":{"type":"x509","x509":{"signingCertificates":{"primary":{"certificate":"x"}}}}}`,
		`{"registrationId":"fz-d","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"info":{"sha256Thumbprint":"00"}}}}}}`,
		`{"authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"AA"}}}`,
		`{"properties":{"desired":{"a":{"b":null}}},"tags":{"t":1}}`,
		`{"methodName":"m","payload":{"x":1},"responseTimeoutInSeconds":1,"connectTimeoutInSeconds":0}`,
		`{"deviceId":"fz-d","payload":"aGk=","properties":{"a":"b"},"ack":"full"}`,
		`{"hub":"sim-hub-1","deviceId":"fz-d"}`,
		`{"scope":"hub","status":503,"count":1}`,
		`{"allocationWeight":2,"latencyMs":5}`,
		`{"query":"SELECT * FROM enrollments"}`,
	}
	for i := range controlRoutes {
		for _, s := range seeds {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := controlRoutes[int(route)%len(controlRoutes)]
		// A fault an earlier input injected (POST /sim/faults) would make
		// this one's 5xx the service's answer as asked: every input starts
		// without faults.
		clear := httptest.NewRequest("DELETE", "http://127.0.0.1/sim/faults", nil)
		clear.Header.Set("Content-Type", "application/json")
		cleared := httptest.NewRecorder()
		if h.ServeHTTP(cleared, clear); cleared.Code != 204 {
			t.Fatalf("DELETE /sim/faults: %d %s", cleared.Code, cleared.Body.String())
		}
		req := httptest.NewRequest(rt.method, "http://127.0.0.1"+rt.path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", rt.method, rt.path, body, rec.Code, rec.Body.String())
		}
		if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"errorCode"`) {
			t.Fatalf("%s %s: %d without an error body: %s", rt.method, rt.path, rec.Code, rec.Body.String())
		}
		if ct := rec.Header().Get("Content-Type"); rec.Body.Len() > 0 && !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("%s %s: answer of type %q", rt.method, rt.path, ct)
		}
	})
}
