package simulator_test

import (
	"net/http"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

func TestControlPlaneErrors(t *testing.T) {
	t.Parallel()
	sim := startSim(t, simtest.WithHubs("h1", "h2"))
	ca := simtest.NewDeviceCA(t)
	leaf := ca.Issue(t, "leaf")
	cases := []struct {
		method, path string
		body         any
		want         int
	}{
		{"PUT", "/enrollmentGroups/g1", map[string]any{"attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]string{"certificate": "not a cert"}}}}}, 400},
		{"PUT", "/enrollmentGroups/g1", map[string]any{"attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]string{"certificate": string(simtest.PEM(leaf.Leaf))}}}}}, 400},
		{"PUT", "/enrollmentGroups/g1", map[string]any{"attestation": map[string]any{"type": "tpm"}}, 400},
		{"PUT", "/enrollmentGroups/g1", map[string]any{"enrollmentGroupId": "other", "attestation": map[string]any{"type": "x509"}}, 400},
		{"PUT", "/enrollmentGroups/g1", map[string]any{"allocationPolicy": "random", "attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]string{"certificate": string(simtest.PEM(ca.Root))}}}}}, 400},
		{"GET", "/enrollmentGroups/missing", nil, 404},
		{"DELETE", "/enrollments/missing", nil, 404},
		{"GET", "/registrations/missing", nil, 404},
		{"PUT", "/devices/bad%20id", map[string]any{"authentication": map[string]any{"type": "certificateAuthority"}}, 400},
		{"PUT", "/devices/d1", map[string]any{"authentication": map[string]any{"type": "sas"}}, 400},
		{"PUT", "/devices/d1", map[string]any{"authentication": map[string]any{"type": "selfSigned"}}, 400},
		{"GET", "/hubs/h2/devices/d1", nil, 404},
		{"GET", "/twins/none", nil, 404},
		{"GET", "/hubs/nope/devices/d1", nil, 404},
		{"GET", "/hubs/nope/devices", nil, 404},
		{"GET", "/hubs/nope/twins/d1", nil, 404},
		{"POST", "/hubs/nope/twins/d1/methods", map[string]any{"methodName": "m"}, 404},
		{"POST", "/hubs/nope/devices/d1/messages/deviceBound", map[string]any{"payload": "x"}, 404},
		{"POST", "/sim/revoke", map[string]any{"hub": "nope", "deviceId": "d1"}, 404},
		{"POST", "/twins/none/methods", map[string]any{}, 400},
		{"POST", "/twins/none/methods", map[string]any{"methodName": "m", "responseTimeoutInSeconds": 1}, 400},
		{"POST", "/sim/c2d", map[string]any{"deviceId": "none"}, 404},
		{"POST", "/sim/c2d", map[string]any{"deviceId": "none", "ack": "sometimes"}, 400},
		{"POST", "/sim/revoke", map[string]any{}, 400},
		{"PATCH", "/sim/hubs/h1", map[string]any{"allocationWeight": 0}, 400},
		{"PATCH", "/sim/hubs/nope", map[string]any{}, 404},
		{"GET", "/sim/telemetry?wait=forever", nil, 400},
		{"DELETE", "/sim/faults/nope", nil, 404},
		{"POST", "/sim/enrollments/x/explode", nil, 404},
	}
	for _, c := range cases {
		st, err := sim.Do(c.method, c.path, c.body, nil)
		if st != c.want {
			t.Errorf("%s %s: status %d (%v), want %d", c.method, c.path, st, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), `"errorCode"`) {
			t.Errorf("%s %s: error body lacks errorCode: %v", c.method, c.path, err)
		}
	}
	// Create, conditional update, list, device on the second hub.
	body := map[string]any{"attestation": map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]string{"certificate": string(simtest.PEM(ca.Root))}}}}}
	var g map[string]any
	if st, err := sim.Do("PUT", "/enrollmentGroups/g1?api-version=2021-10-01", body, &g); st != http.StatusCreated {
		t.Fatalf("create: %d %v", st, err)
	}
	if g["etag"] == "" || g["attestation"].(map[string]any)["x509"].(map[string]any)["signingCertificates"].(map[string]any)["primary"].(map[string]any)["info"] == nil {
		t.Fatalf("group response lacks etag/info: %v", g)
	}
	req, _ := http.NewRequest("PUT", sim.Ready.ControlURL+"/enrollmentGroups/g1", strings.NewReader(`{"attestation":{"type":"x509","x509":{"signingCertificates":{"primary":{"certificate":"`+strings.ReplaceAll(string(simtest.PEM(ca.Root)), "\n", `\n`)+`"}}}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", `"stale"`)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusPreconditionFailed {
		t.Fatalf("If-Match: %v %v", err, resp)
	}
	sim.MustDo("PUT", "/hubs/h2/devices/d2", map[string]any{"authentication": map[string]any{"type": "selfSigned", "x509Thumbprint": map[string]string{"primaryThumbprint": "AA"}}}, nil)
	var devs []map[string]any
	sim.MustDo("GET", "/hubs/h2/devices", nil, &devs)
	if len(devs) != 1 || devs[0]["deviceId"] != "d2" {
		t.Fatalf("h2 devices %v", devs)
	}
	sim.MustDo("GET", "/hubs/h1/devices", nil, &devs)
	if len(devs) != 0 {
		t.Fatalf("h1 devices %v", devs)
	}
}

func TestDeleteEnrollmentSurvivesRestart(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollIndividual(t, "Dev-A", ca.Issue(t, "Dev-A").Leaf)
	sim.EnrollGroup(t, "g1", ca.Root)
	if st, err := sim.Do("DELETE", "/enrollments/dev-a", nil, nil); st != http.StatusNoContent {
		t.Fatalf("delete individual: %d %v", st, err)
	}
	if st, err := sim.Do("DELETE", "/enrollmentGroups/g1", nil, nil); st != http.StatusNoContent {
		t.Fatalf("delete group: %d %v", st, err)
	}
	sim.Restart()
	for _, p := range []string{"/enrollments/Dev-A", "/enrollmentGroups/g1"} {
		if st, _ := sim.Do("GET", p, nil, nil); st != http.StatusNotFound {
			t.Errorf("GET %s after delete and restart: %d, want 404", p, st)
		}
	}
}

// TestEnrollmentCaseOneRecord: individual enrollment IDs match without
// regard to case, so re-PUTting in another case must not leave a second
// stored record that comes back after a restart.
func TestEnrollmentCaseOneRecord(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	leaf := ca.Issue(t, "dev-b").Leaf
	sim.EnrollIndividual(t, "Dev-B", leaf)
	sim.EnrollIndividual(t, "dev-b", leaf)
	if st, err := sim.Do("DELETE", "/enrollments/DEV-B", nil, nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %v", st, err)
	}
	sim.Restart()
	if st, _ := sim.Do("GET", "/enrollments/dev-b", nil, nil); st != http.StatusNotFound {
		t.Errorf("GET after delete and restart: %d, want 404 (a stale record of the other case survived)", st)
	}
}
