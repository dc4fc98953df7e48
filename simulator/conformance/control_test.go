package conformance

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
)

// readyLine is the simulator's ready line as the team contract defines it,
// decoded here independently of the simulator's own types.
type readyLine struct {
	IDScope string `json:"id_scope"`
	DPS     struct {
		Host   string `json:"host"`
		Addr   string `json:"addr"`
		WSAddr string `json:"ws_addr"`
	} `json:"dps"`
	Hubs []struct {
		Name   string `json:"name"`
		Host   string `json:"host"`
		Addr   string `json:"addr"`
		WSAddr string `json:"ws_addr"`
	} `json:"hubs"`
	ControlURL string `json:"control_url"`
	ServerCA   string `json:"server_ca"`
}

// target is one running simulator as seen from outside: its endpoints,
// the roots that verify it, and a control-plane client.
type target struct {
	t     testing.TB
	ready readyLine
	raw   json.RawMessage // the ready line as JSON, handed to the Node scripts
	roots *x509.CertPool
	http  *http.Client
}

func newTarget(t testing.TB, ready any) *target {
	t.Helper()
	b, err := json.Marshal(ready)
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{t: t, raw: b, http: &http.Client{Timeout: 30 * time.Second}}
	if err := json.Unmarshal(b, &tg.ready); err != nil {
		t.Fatalf("ready line %s: %v", b, err)
	}
	if len(tg.ready.Hubs) == 0 || tg.ready.DPS.Addr == "" || tg.ready.ControlURL == "" {
		t.Fatalf("ready line lacks dps, hubs or control_url: %s", b)
	}
	tg.roots = loadPool(t, tg.ready.ServerCA)
	return tg
}

// on returns a view of tg whose failures are reported on t (a subtest), so
// that a helper never calls FailNow on a parent test from a subtest.
func (tg *target) on(t testing.TB) *target {
	c := *tg
	c.t = t
	return &c
}

func (tg *target) dps() endpoint { return endpoint{host: tg.ready.DPS.Host, addr: tg.ready.DPS.Addr} }

// hub returns the endpoint serving hub host h.
func (tg *target) hub(h string) endpoint {
	for _, x := range tg.ready.Hubs {
		if strings.EqualFold(x.Host, h) {
			return endpoint{host: x.Host, addr: x.Addr}
		}
	}
	tg.t.Fatalf("hub %q is not in the ready line", h)
	return endpoint{}
}

// Service API versions used on the control plane (Azure's service REST APIs).
const (
	dpsServiceAPI = "2021-10-01"
	hubServiceAPI = "2021-04-12"
)

// do sends one control-plane request; body is JSON-encoded unless it is
// nil. It returns the status and the raw response body.
func (tg *target) do(method, path string, body any) (int, []byte) {
	tg.t.Helper()
	if body == nil {
		return tg.send(method, path, nil)
	}
	b, err := json.Marshal(body)
	if err != nil {
		tg.t.Fatal(err)
	}
	return tg.send(method, path, bytes.NewReader(b))
}

// send sends one control-plane request with body (as JSON, when not nil)
// and returns the status and the raw response body.
func (tg *target) send(method, path string, body io.Reader) (int, []byte) {
	tg.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, tg.ready.ControlURL+path, body)
	if err != nil {
		tg.t.Fatal(err)
	}
	// Always JSON, body or not: the control plane refuses anything else
	// (a browser could send it cross-origin).
	req.Header.Set("Content-Type", "application/json")
	resp, err := tg.http.Do(req)
	if err != nil {
		tg.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tg.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// mustDo is do that fails the test on a non-2xx status and decodes into out.
func (tg *target) mustDo(method, path string, body, out any) {
	tg.t.Helper()
	st, b := tg.do(method, path, body)
	if st/100 != 2 {
		tg.t.Fatalf("%s %s: HTTP %d: %s", method, path, st, strings.TrimSpace(string(b)))
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			tg.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

func q(api string) string { return "?api-version=" + api }

// enrollGroup creates an X.509 enrollment group anchored on caPEM, in the
// DPS service API shape (PUT /enrollmentGroups/{id}).
func (tg *target) enrollGroup(id string, caPEM []byte, extra map[string]any) {
	tg.t.Helper()
	body := map[string]any{
		"enrollmentGroupId": id,
		"attestation": map[string]any{
			"type": "x509",
			"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": string(caPEM)}}},
		},
		"provisioningStatus": "enabled",
	}
	for k, v := range extra {
		body[k] = v
	}
	tg.mustDo(http.MethodPut, "/enrollmentGroups/"+url.PathEscape(id)+q(dpsServiceAPI), body, nil)
}

// registrationState reads DPS's record for regID (GET /registrations/{id}).
func (tg *target) registrationState(regID string) map[string]any {
	tg.t.Helper()
	var m map[string]any
	tg.mustDo(http.MethodGet, "/registrations/"+url.PathEscape(regID)+q(dpsServiceAPI), nil, &m)
	return m
}

// device reads the hub's device identity. Hubs are addressed by name.
func (tg *target) device(hubName, deviceID string) (int, map[string]any) {
	tg.t.Helper()
	st, b := tg.do(http.MethodGet, hubPath(hubName)+"/devices/"+url.PathEscape(deviceID)+q(hubServiceAPI), nil)
	var m map[string]any
	if st == 200 {
		if err := json.Unmarshal(b, &m); err != nil {
			tg.t.Fatalf("device %s: %v: %s", deviceID, err, b)
		}
	}
	return st, m
}

// twin reads the device twin.
func (tg *target) twin(hubName, deviceID string) map[string]any {
	tg.t.Helper()
	var m map[string]any
	tg.mustDo(http.MethodGet, hubPath(hubName)+"/twins/"+url.PathEscape(deviceID)+q(hubServiceAPI), nil, &m)
	return m
}

// patchDesired updates desired properties through the service API.
func (tg *target) patchDesired(hubName, deviceID string, desired map[string]any) {
	tg.t.Helper()
	body := map[string]any{"properties": map[string]any{"desired": desired}}
	tg.mustDo(http.MethodPatch, hubPath(hubName)+"/twins/"+url.PathEscape(deviceID)+q(hubServiceAPI), body, nil)
}

// invokeMethod calls a direct method and returns the service's answer
// ({"status":..., "payload":...}).
func (tg *target) invokeMethod(hubName, deviceID, name string, payload any, timeoutS int) (int, map[string]any) {
	tg.t.Helper()
	body := map[string]any{"methodName": name, "payload": payload, "responseTimeoutInSeconds": timeoutS}
	st, b := tg.do(http.MethodPost, hubPath(hubName)+"/twins/"+url.PathEscape(deviceID)+"/methods"+q(hubServiceAPI), body)
	var m map[string]any
	json.Unmarshal(b, &m)
	if m == nil {
		m = map[string]any{"raw": string(b)}
	}
	return st, m
}

// sendC2D queues a cloud-to-device message through the service API
// (POST /devices/{id}/messages/deviceBound on the chosen hub).
func (tg *target) sendC2D(hubName, deviceID string, msg map[string]any) {
	tg.t.Helper()
	tg.mustDo(http.MethodPost, hubPath(hubName)+"/devices/"+url.PathEscape(deviceID)+"/messages/deviceBound"+q(hubServiceAPI), msg, nil)
}

// telemetry lists recorded telemetry of one device (simulator endpoint).
func (tg *target) telemetry(hubName, deviceID string) []map[string]any {
	tg.t.Helper()
	var m []map[string]any
	tg.mustDo(http.MethodGet, "/sim/telemetry?hub="+url.QueryEscape(hubName)+"&deviceId="+url.QueryEscape(deviceID), nil, &m)
	return m
}

// revoke revokes a device certificate (simulator endpoint).
func (tg *target) revokeCert(certPEM []byte) {
	tg.t.Helper()
	tg.mustDo(http.MethodPost, "/sim/revoke", map[string]any{"certificate": string(certPEM)}, nil)
}

func hubPath(name string) string { return "/hubs/" + url.PathEscape(name) }

// waitFor polls cond until it returns nil or the bound passes; it is how
// tests wait on the simulator's records (a real process: clocktest.Poll,
// never a fixed sleep).
func waitFor(t testing.TB, what string, bound time.Duration, cond func() error) {
	t.Helper()
	var err error
	if !clocktest.Poll(bound, func() bool { err = cond(); return err == nil }) {
		t.Fatalf("%s: still not true after %s: %v", what, bound, err)
	}
}

func jget(m any, path ...string) any {
	for _, p := range path {
		mm, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = mm[p]
	}
	return m
}

func jstr(m any, path ...string) string {
	v := jget(m, path...)
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// parallel runs body as a parallel subtest of t named name, with a view
// of tg that reports on the subtest.
func (tg *target) parallel(t *testing.T, name string, body func(t *testing.T, tg *target)) {
	t.Run(name, func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		body(t, tg)
	})
}
