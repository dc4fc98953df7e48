package conformance

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestControlPlaneErrors sends bad requests to the Azure-shaped service API
// of the simulator. Each must be refused with the status Azure uses and an
// error body (errorCode = status*1000+n, message naming the problem,
// trackingId, timestampUtc), never accepted or answered with a 500.
func TestControlPlaneErrors(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance control CA")
	leaf := ca.issue(t, "control-leaf-1", leafOpts{})
	tg.enrollGroup("control", ca.PEM, nil)
	d := tg.provision(t, ca, "control-dev-1")
	hub := hubPath(d.name)

	group := func(cert string, extra map[string]any) map[string]any {
		m := map[string]any{"enrollmentGroupId": "g1", "attestation": map[string]any{"type": "x509",
			"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": cert}}}}}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name, method, path string
		body               any
		raw                string // sent as is when set
		want               int
		mention            string // the message must name this
	}{
		{"enrollment group body not JSON", "PUT", "/enrollmentGroups/g1", nil, `{"enrollmentGroupId":`, 400, ""},
		{"enrollment group with a leaf as signing certificate", "PUT", "/enrollmentGroups/g1", group(string(leaf.CertPEM), nil), "", 400, "CA"},
		{"enrollment group with a certificate that is not PEM", "PUT", "/enrollmentGroups/g1", group("MIIB-not-a-cert", nil), "", 400, "certificate"},
		{"enrollment group with unknown allocation policy", "PUT", "/enrollmentGroups/g1", group(string(ca.PEM), map[string]any{"allocationPolicy": "roundRobin"}), "", 400, "allocationPolicy"},
		{"enrollment group with bad provisioning status", "PUT", "/enrollmentGroups/g1", group(string(ca.PEM), map[string]any{"provisioningStatus": "maybe"}), "", 400, "provisioningStatus"},
		{"unknown enrollment group", "GET", "/enrollmentGroups/nope", nil, "", 404, ""},
		{"unknown registration", "GET", "/registrations/nope", nil, "", 404, ""},
		{"unknown device", "GET", hub + "/devices/nope", nil, "", 404, ""},
		{"twin of unknown device", "GET", hub + "/twins/nope", nil, "", 404, ""},
		{"method timeout below 5 s", "POST", hub + "/twins/" + d.id + "/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 1}, "", 400, "responseTimeoutInSeconds"},
		{"method without a name", "POST", hub + "/twins/" + d.id + "/methods", map[string]any{"payload": 1}, "", 400, "methodName"},
		{"method on unknown device", "POST", hub + "/twins/nope/methods", map[string]any{"methodName": "m"}, "", 404, ""},
		{"C2D over 64 KB", "POST", hub + "/devices/" + d.id + "/messages/deviceBound", map[string]any{"payload": strings.Repeat("x", 65*1024)}, "", 413, ""},
		{"C2D to unknown device", "POST", hub + "/devices/nope/messages/deviceBound", map[string]any{"payload": "x"}, "", 404, ""},
		{"desired patch that is not an object", "PATCH", hub + "/twins/" + d.id, nil, `{"properties":{"desired":[1,2]}}`, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := tg.on(t)
			var st int
			var b []byte
			if tc.raw != "" {
				st, b = tg.doRaw(tc.method, tc.path+q(hubServiceAPI), tc.raw)
			} else {
				st, b = tg.do(tc.method, tc.path+q(hubServiceAPI), tc.body)
			}
			if st != tc.want {
				t.Fatalf("HTTP %d %s; want %d", st, trunc(string(b), 300), tc.want)
			}
			var eb map[string]any
			if err := json.Unmarshal(b, &eb); err != nil {
				t.Fatalf("error body %q is not JSON: %v", trunc(string(b), 300), err)
			}
			code, _ := eb["errorCode"].(float64)
			if int(code)/1000 != st || jstr(eb, "message") == "" || jstr(eb, "trackingId") == "" || jstr(eb, "timestampUtc") == "" {
				t.Errorf("error body %s; want errorCode %d…, message, trackingId, timestampUtc", b, st)
			}
			if tc.mention != "" && !strings.Contains(jstr(eb, "message"), tc.mention) {
				t.Errorf("error message %q does not name %q", jstr(eb, "message"), tc.mention)
			}
		})
	}
}

// doRaw sends body exactly as given.
func (tg *target) doRaw(method, path, body string) (int, []byte) {
	tg.t.Helper()
	return tg.send(method, path, strings.NewReader(body))
}
