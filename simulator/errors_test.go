package simulator_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"devid/simulator/simtest"
)

// dpsOnce connects to DPS, subscribes, publishes one register body and
// returns the first response.
func dpsOnce(t *testing.T, sim *simtest.Sim, dev *simtest.DeviceCert, clientID, username, body string) msg {
	t.Helper()
	c, err := dialMQTT(t, sim.Ready.DPS.Addr, clientID, username, sim.TLSConfig(sim.Ready.DPS.Host, dev.TLSCertificate()), true)
	if err != nil {
		t.Fatalf("DPS connect: %v", err)
	}
	defer c.c.Disconnect(0)
	c.sub("$dps/registrations/res/#")
	c.pub("$dps/registrations/PUT/iotdps-register/?$rid=e1", 0, []byte(body))
	return c.next("$dps/registrations/res/")
}

type errBody struct {
	ErrorCode    int    `json:"errorCode"`
	TrackingID   string `json:"trackingId"`
	Message      string `json:"message"`
	TimestampUtc string `json:"timestampUtc"`
}

func wantDPSError(t *testing.T, m msg, status string, code int) {
	t.Helper()
	if !strings.HasPrefix(m.topic, "$dps/registrations/res/"+status+"/?$rid=e1") {
		t.Fatalf("topic %s (body %s), want status %s", m.topic, m.payload, status)
	}
	var e errBody
	if err := json.Unmarshal(m.payload, &e); err != nil {
		t.Fatalf("error body %s: %v", m.payload, err)
	}
	if e.ErrorCode != code || e.TrackingID == "" || e.Message == "" || e.TimestampUtc == "" {
		t.Fatalf("error body %s, want errorCode %d with trackingId, message, timestampUtc", m.payload, code)
	}
}

func isNotAuthorized(err error) bool {
	return err != nil && errors.Is(err, packets.ErrorRefusedNotAuthorised)
}

func TestDPSErrorPaths(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	reg := func(id string) string { return `{"registrationId":"` + id + `"}` }

	t.Run("malformed JSON", func(t *testing.T) {
		d := ca.Issue(t, "bad-json")
		wantDPSError(t, dpsOnce(t, sim, d, "bad-json", dpsUser(sim, "bad-json"), `{"registrationId":`), "400", 400004)
	})
	t.Run("payload not an object", func(t *testing.T) {
		d := ca.Issue(t, "bad-payload")
		wantDPSError(t, dpsOnce(t, sim, d, "bad-payload", dpsUser(sim, "bad-payload"), `{"registrationId":"bad-payload","payload":[1]}`), "400", 400004)
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		d := simtest.NewDeviceCA(t).Issue(t, "untrusted")
		wantDPSError(t, dpsOnce(t, sim, d, "untrusted", dpsUser(sim, "untrusted"), reg("untrusted")), "401", 401002)
	})
	t.Run("missing intermediate", func(t *testing.T) {
		d := ca.Issue(t, "no-inter")
		d.Chain = d.Chain[:1]
		wantDPSError(t, dpsOnce(t, sim, d, "no-inter", dpsUser(sim, "no-inter"), reg("no-inter")), "401", 401002)
	})
	t.Run("expired certificate", func(t *testing.T) {
		d := ca.Issue(t, "expired", simtest.Validity(time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)))
		wantDPSError(t, dpsOnce(t, sim, d, "expired", dpsUser(sim, "expired"), reg("expired")), "401", 401002)
	})
	t.Run("revoked certificate", func(t *testing.T) {
		d := ca.Issue(t, "revoked")
		sim.RevokeCert(t, d.Leaf)
		wantDPSError(t, dpsOnce(t, sim, d, "revoked", dpsUser(sim, "revoked"), reg("revoked")), "401", 401002)
	})
	t.Run("unknown operation", func(t *testing.T) {
		d := ca.Issue(t, "unknown-op")
		c, err := dialMQTT(t, sim.Ready.DPS.Addr, "unknown-op", dpsUser(sim, "unknown-op"), sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatal(err)
		}
		c.sub("$dps/registrations/res/#")
		c.pub("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=e1&operationId=nope", 1, nil)
		wantDPSError(t, c.next("$dps/registrations/res/"), "404", 404002)
	})
	t.Run("client id differs from CN", func(t *testing.T) {
		d := ca.Issue(t, "cn-a")
		_, err := dialMQTT(t, sim.Ready.DPS.Addr, "cn-b", dpsUser(sim, "cn-b"), sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
		if !isNotAuthorized(err) {
			t.Fatalf("connect: %v, want CONNACK 5", err)
		}
	})
	t.Run("wrong username formats", func(t *testing.T) {
		d := ca.Issue(t, "user-fmt")
		for _, u := range []string{
			sim.Ready.IDScope + "/registrations/user-fmt/?api-version=2019-03-31",
			sim.Ready.IDScope + "/registrations/user-fmt",
			"0neWRONG/registrations/user-fmt/api-version=2019-03-31",
			sim.Ready.IDScope + "/registrations/user-fmt/api-version=1999-01-01",
			sim.Ready.IDScope + "/devices/user-fmt/api-version=2019-03-31",
		} {
			if _, err := dialMQTT(t, sim.Ready.DPS.Addr, "user-fmt", u, sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true); !isNotAuthorized(err) {
				t.Errorf("username %q: %v, want CONNACK 5", u, err)
			}
		}
	})
	t.Run("unknown topic closes", func(t *testing.T) {
		d := ca.Issue(t, "dps-topic")
		c, err := dialMQTT(t, sim.Ready.DPS.Addr, "dps-topic", dpsUser(sim, "dps-topic"), sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatal(err)
		}
		c.c.Publish("$dps/registrations/POST/whatever/?$rid=1", 0, false, []byte("{}"))
		c.waitLost()
	})
	t.Run("oversized register body", func(t *testing.T) {
		d := ca.Issue(t, "big-body")
		body := `{"registrationId":"big-body","payload":{"x":"` + strings.Repeat("a", 100*1024) + `"}}`
		wantDPSError(t, dpsOnce(t, sim, d, "big-body", dpsUser(sim, "big-body"), body), "400", 400004)
	})
	t.Run("poll limit", func(t *testing.T) {
		d := ca.Issue(t, "poller")
		c, err := dialMQTT(t, sim.Ready.DPS.Addr, "poller", dpsUser(sim, "poller"), sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatal(err)
		}
		c.sub("$dps/registrations/res/#")
		c.pub("$dps/registrations/PUT/iotdps-register/?$rid=r", 1, []byte(reg("poller")))
		var st opStatus
		_ = json.Unmarshal(c.next("$dps/registrations/res/202/").payload, &st)
		got429 := false
		for i := 0; i < 6 && !got429; i++ {
			c.pub("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=e1&operationId="+st.OperationID, 1, nil)
			m := c.next("$dps/registrations/res/")
			if strings.HasPrefix(m.topic, "$dps/registrations/res/429/") {
				if !strings.Contains(m.topic, "&retry-after=") {
					t.Fatalf("429 without retry-after: %s", m.topic)
				}
				if i != 5 {
					t.Fatalf("429 after %d polls, want after 5", i)
				}
				got429 = true
			}
		}
		if !got429 {
			t.Fatal("6 polls in a row were not throttled")
		}
	})
	t.Run("disabled enrollment", func(t *testing.T) {
		ca2 := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "off", ca2.Root, simtest.Disabled())
		st := register(t, sim, ca2.Issue(t, "off-dev"), "")
		if st.Status != "disabled" {
			t.Fatalf("status %q, want disabled", st.Status)
		}
	})
	t.Run("injected 429", func(t *testing.T) {
		d := ca.Issue(t, "throttled")
		sim.SetFault(t, simtest.Fault{Scope: "dps", DeviceID: "throttled", Status: 429, RetryAfter: 7, Count: 1})
		m := dpsOnce(t, sim, d, "throttled", dpsUser(sim, "throttled"), reg("throttled"))
		if !strings.HasPrefix(m.topic, "$dps/registrations/res/429/?$rid=e1&retry-after=7") {
			t.Fatalf("topic %s", m.topic)
		}
		// count 1: the next attempt goes through.
		if st := register(t, sim, d, ""); st.Status != "assigned" {
			t.Fatalf("after the fault: %+v", st)
		}
	})
}

func TestDPSMismatchRegisterSwitch(t *testing.T) {
	t.Parallel()
	sim := startSim(t, simtest.WithArgs("--dps-id-mismatch", "register", "--disabled-enrollment", "401",
		"--registrations-per-minute", "2", "--dps-error-message-field", "both"))
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	d := ca.Issue(t, "cn-x")
	wantDPSError(t, dpsOnce(t, sim, d, "cn-y", dpsUser(sim, "cn-y"), `{"registrationId":"cn-y"}`), "401", 401002)
	ca2 := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "off", ca2.Root, simtest.Disabled())
	m := dpsOnce(t, sim, ca2.Issue(t, "off-1"), "off-1", dpsUser(sim, "off-1"), `{"registrationId":"off-1"}`)
	wantDPSError(t, m, "401", 401002)
	if !strings.Contains(string(m.payload), `"errorMessage":`) {
		t.Fatalf("--dps-error-message-field both: %s", m.payload)
	}
	// Third register within the minute: throttled.
	m = dpsOnce(t, sim, ca2.Issue(t, "off-2"), "off-2", dpsUser(sim, "off-2"), `{"registrationId":"off-2"}`)
	wantDPSError(t, m, "429", 429001)
	if !strings.Contains(m.topic, "&retry-after=") {
		t.Fatalf("429 without retry-after: %s", m.topic)
	}
}

func hubUser(h simtest.Hub, id string) string { return h.Host + "/" + id + "/?api-version=2021-04-12" }

func TestHubErrorPaths(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	h := sim.Hub("")
	provision := func(t *testing.T, id string) *simtest.DeviceCert {
		t.Helper()
		d := ca.Issue(t, id)
		if st := register(t, sim, d, ""); st.Status != "assigned" {
			t.Fatalf("register %s: %+v", id, st)
		}
		return d
	}
	connect := func(t *testing.T, d *simtest.DeviceCert, id string) *mqttClient {
		t.Helper()
		c, err := dialMQTT(t, h.Addr, id, hubUser(h, id), sim.TLSConfig(h.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatalf("hub connect %s: %v", id, err)
		}
		return c
	}
	t.Run("unknown device", func(t *testing.T) {
		d := ca.Issue(t, "never-registered")
		if _, err := dialMQTT(t, h.Addr, "never-registered", hubUser(h, "never-registered"), sim.TLSConfig(h.Host, d.TLSCertificate()), true); !isNotAuthorized(err) {
			t.Fatalf("%v, want CONNACK 5", err)
		}
	})
	d := provision(t, "hub-dev")
	t.Run("other certificate for the device", func(t *testing.T) {
		other := ca.Issue(t, "hub-dev")
		if _, err := dialMQTT(t, h.Addr, "hub-dev", hubUser(h, "hub-dev"), sim.TLSConfig(h.Host, other.TLSCertificate()), true); !isNotAuthorized(err) {
			t.Fatalf("%v, want CONNACK 5", err)
		}
	})
	t.Run("wrong usernames", func(t *testing.T) {
		for _, u := range []string{"hub-dev", "other.azure-devices.net/hub-dev/?api-version=2021-04-12", h.Host + "/hub-dev/api-version=2021-04-12",
			h.Host + "/someone/?api-version=2021-04-12", h.Host + "/hub-dev/?api-version=1999-01-01"} {
			if _, err := dialMQTT(t, h.Addr, "hub-dev", u, sim.TLSConfig(h.Host, d.TLSCertificate()), true); !isNotAuthorized(err) {
				t.Errorf("username %q: %v, want CONNACK 5", u, err)
			}
		}
	})
	closes := map[string]func(c *mqttClient){
		"QoS 2":         func(c *mqttClient) { c.c.Publish("devices/hub-dev/messages/events/", 2, false, []byte("x")) },
		"unknown topic": func(c *mqttClient) { c.c.Publish("foo/bar", 0, false, []byte("x")) },
		"other device":  func(c *mqttClient) { c.c.Publish("devices/other/messages/events/", 0, false, []byte("x")) },
		"oversized": func(c *mqttClient) {
			c.c.Publish("devices/hub-dev/messages/events/", 1, false, make([]byte, 256*1024+1))
		},
		"bad escape":    func(c *mqttClient) { c.c.Publish("devices/hub-dev/messages/events/a=%zz", 0, false, []byte("x")) },
		"bad subscribe": func(c *mqttClient) { c.c.Subscribe("#", 0, nil) },
	}
	for name, f := range closes {
		t.Run(name+" closes", func(t *testing.T) {
			c := connect(t, d, "hub-dev")
			f(c)
			c.waitLost()
		})
	}
	t.Run("malformed reported patch", func(t *testing.T) {
		c := connect(t, d, "hub-dev")
		c.sub("$iothub/twin/res/#")
		c.pub("$iothub/twin/PATCH/properties/reported/?$rid=x", 0, []byte("{not json"))
		if m := c.next("$iothub/twin/res/"); !strings.HasPrefix(m.topic, "$iothub/twin/res/400/?$rid=x") {
			t.Fatalf("topic %s", m.topic)
		}
	})
	t.Run("second connection kicks the first", func(t *testing.T) {
		c1 := connect(t, d, "hub-dev")
		_ = connect(t, d, "hub-dev")
		c1.waitLost()
	})
	t.Run("revoked while connected", func(t *testing.T) {
		d2 := provision(t, "hub-rev")
		c := connect(t, d2, "hub-rev")
		sim.RevokeCert(t, d2.Leaf)
		c.waitLost()
		if _, err := dialMQTT(t, h.Addr, "hub-rev", hubUser(h, "hub-rev"), sim.TLSConfig(h.Host, d2.TLSCertificate()), true); !isNotAuthorized(err) {
			t.Fatalf("%v, want CONNACK 5", err)
		}
	})
	t.Run("disabled device", func(t *testing.T) {
		d3 := provision(t, "hub-off")
		c := connect(t, d3, "hub-off")
		sim.MustDo("POST", "/sim/devices/"+h.Name+"/hub-off/disable", nil, nil)
		c.waitLost()
		if _, err := dialMQTT(t, h.Addr, "hub-off", hubUser(h, "hub-off"), sim.TLSConfig(h.Host, d3.TLSCertificate()), true); !isNotAuthorized(err) {
			t.Fatalf("%v, want CONNACK 5", err)
		}
	})
	t.Run("method timeout and offline", func(t *testing.T) {
		st, err := sim.Do("POST", "/twins/never/methods", map[string]any{"methodName": "x"}, nil)
		if st != http.StatusNotFound || err == nil {
			t.Fatalf("offline method: %d %v", st, err)
		}
		c := connect(t, d, "hub-dev")
		c.sub("$iothub/methods/POST/#")
		st, err = sim.Do("POST", "/twins/hub-dev/methods", map[string]any{"methodName": "slow", "responseTimeoutInSeconds": 5}, nil)
		if st != http.StatusGatewayTimeout || err == nil {
			t.Fatalf("timeout: %d %v", st, err)
		}
	})
}

func TestCSRIssuanceAndRestart(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root, simtest.IssueCertificates())
	d := ca.Issue(t, "csr-dev")
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "csr-dev"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	body := `{"registrationId":"csr-dev","csr":"` + base64.StdEncoding.EncodeToString(der) + `"}`
	// Older api-version: csr ignored.
	st := register(t, sim, d, body)
	if st.RegistrationState["issuedCertificateChain"] != nil {
		t.Fatalf("chain issued with api-version 2019-03-31: %v", st.RegistrationState)
	}
	c, err := dialMQTT(t, sim.Ready.DPS.Addr, "csr-dev", sim.Ready.IDScope+"/registrations/csr-dev/api-version=2025-07-01-preview",
		sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
	if err != nil {
		t.Fatal(err)
	}
	c.sub("$dps/registrations/res/#")
	c.pub("$dps/registrations/PUT/iotdps-register/?$rid=1", 1, []byte(body))
	var op opStatus
	_ = json.Unmarshal(c.next("$dps/registrations/res/202/").payload, &op)
	c.pub("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId="+op.OperationID, 1, nil)
	m := c.next("$dps/registrations/res/200/")
	var res struct {
		RegistrationState struct {
			IssuedCertificateChain []string `json:"issuedCertificateChain"`
			AssignedHub            string   `json:"assignedHub"`
		} `json:"registrationState"`
	}
	if err := json.Unmarshal(m.payload, &res); err != nil || len(res.RegistrationState.IssuedCertificateChain) != 3 {
		t.Fatalf("result %s: %v", m.payload, err)
	}
	var chain []*x509.Certificate
	for _, b := range res.RegistrationState.IssuedCertificateChain {
		der, _ := base64.StdEncoding.DecodeString(b)
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, cert)
	}
	if chain[0].Subject.CommonName != "csr-dev" || chain[0].CheckSignatureFrom(chain[1]) != nil || chain[1].CheckSignatureFrom(chain[2]) != nil {
		t.Fatal("issued chain does not chain leaf -> intermediate -> root")
	}
	issued := &simtest.DeviceCert{Leaf: chain[0], Key: k, Chain: chain[:2]}
	h := sim.Hub("")
	// The hub now wants the issued certificate, not the onboarding one.
	if _, err := dialMQTT(t, h.Addr, "csr-dev", hubUser(h, "csr-dev"), sim.TLSConfig(h.Host, d.TLSCertificate()), true); !isNotAuthorized(err) {
		t.Fatalf("onboarding cert on hub: %v, want CONNACK 5", err)
	}
	hc, err := dialMQTT(t, h.Addr, "csr-dev", hubUser(h, "csr-dev"), sim.TLSConfig(h.Host, issued.TLSCertificate()), false)
	if err != nil {
		t.Fatalf("issued cert on hub: %v", err)
	}
	hc.pub("devices/csr-dev/messages/events/", 1, []byte("before restart"))
	sim.WaitTelemetry(t, "csr-dev", 1, 10*time.Second)
	hc.c.Disconnect(0)
	sim.SendC2D(t, "", "csr-dev", "queued across restart", nil)

	// Restart: enrollment, registration, device and telemetry survive.
	sim.Restart()
	if rs := sim.RegistrationState(t, "csr-dev"); rs["status"] != "assigned" || rs["assignedHub"] != h.Host {
		t.Fatalf("registration after restart: %v", rs)
	}
	if tel := sim.Telemetry(t, "csr-dev"); len(tel) != 1 || tel[0].Body != "before restart" {
		t.Fatalf("telemetry after restart: %+v", tel)
	}
	hc, err = dialMQTT(t, h.Addr, "csr-dev", hubUser(h, "csr-dev"), sim.TLSConfig(h.Host, issued.TLSCertificate()), false)
	if err != nil {
		t.Fatalf("hub after restart: %v", err)
	}
	hc.pub("devices/csr-dev/messages/events/", 1, []byte("after restart"))
	sim.WaitTelemetry(t, "csr-dev", 2, 10*time.Second)
	hc.sub("devices/csr-dev/messages/devicebound/#")
	if m := hc.next("devices/csr-dev/messages/devicebound/"); string(m.payload) != "queued across restart" {
		t.Fatalf("C2D after restart: %s", m.payload)
	}
	if st := register(t, sim, ca.Issue(t, "after-restart"), ""); st.Status != "assigned" {
		t.Fatalf("group enrollment after restart: %+v", st)
	}
	// CRL lists a revoked issued certificate.
	sim.RevokeCert(t, chain[0])
	resp, err := http.Get(sim.Ready.CRLURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	crl, err := x509.ParseRevocationList(b)
	if err != nil || crl.CheckSignatureFrom(chain[1]) != nil {
		t.Fatalf("CRL: %v", err)
	}
	found := false
	for _, e := range crl.RevokedCertificateEntries {
		found = found || e.SerialNumber.Cmp(chain[0].SerialNumber) == 0
	}
	if !found {
		t.Fatal("revoked issued certificate not on the CRL")
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	d := ca.Issue(t, "faulty")
	if st := register(t, sim, d, ""); st.Status != "assigned" {
		t.Fatal(st)
	}
	h := sim.Hub("")
	t.Run("drop after K messages", func(t *testing.T) {
		id := sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: "faulty", DropAfter: 2})
		defer sim.MustDo("DELETE", "/sim/faults/"+id, nil, nil)
		c, err := dialMQTT(t, h.Addr, "faulty", hubUser(h, "faulty"), sim.TLSConfig(h.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatal(err)
		}
		c.pub("devices/faulty/messages/events/", 1, []byte("1"))
		c.pub("devices/faulty/messages/events/", 1, []byte("2"))
		c.c.Publish("devices/faulty/messages/events/", 1, false, []byte("3"))
		c.waitLost()
	})
	t.Run("refuse connections", func(t *testing.T) {
		id := sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: "faulty", RefuseSeconds: 300})
		if _, err := dialMQTT(t, h.Addr, "faulty", hubUser(h, "faulty"), sim.TLSConfig(h.Host, d.TLSCertificate()), true); err == nil {
			t.Fatal("connection accepted during refuseSeconds")
		}
		sim.MustDo("DELETE", "/sim/faults/"+id, nil, nil)
		if _, err := dialMQTT(t, h.Addr, "faulty", hubUser(h, "faulty"), sim.TLSConfig(h.Host, d.TLSCertificate()), true); err != nil {
			t.Fatalf("after clearing the fault: %v", err)
		}
	})
	t.Run("twin 503 then telemetry throttling closes", func(t *testing.T) {
		c, err := dialMQTT(t, h.Addr, "faulty", hubUser(h, "faulty"), sim.TLSConfig(h.Host, d.TLSCertificate()), true)
		if err != nil {
			t.Fatal(err)
		}
		c.sub("$iothub/twin/res/#")
		sim.SetFault(t, simtest.Fault{Scope: "hub", Ops: []string{"twin"}, Status: 503, Count: 1})
		c.pub("$iothub/twin/GET/?$rid=f1", 0, nil)
		if m := c.next("$iothub/twin/res/"); !strings.HasPrefix(m.topic, "$iothub/twin/res/503/?$rid=f1") {
			t.Fatalf("topic %s", m.topic)
		}
		c.pub("$iothub/twin/GET/?$rid=f2", 0, nil)
		if m := c.next("$iothub/twin/res/"); !strings.HasPrefix(m.topic, "$iothub/twin/res/200/?$rid=f2") {
			t.Fatalf("count 1 fault applied twice: %s", m.topic)
		}
		sim.SetFault(t, simtest.Fault{Scope: "hub", Ops: []string{"telemetry"}, Status: 429, Count: 1})
		c.c.Publish("devices/faulty/messages/events/", 1, false, []byte("x"))
		c.waitLost()
	})
	t.Run("bad fault is refused", func(t *testing.T) {
		if st, err := sim.Do("POST", "/sim/faults", map[string]any{"status": 404}, nil); st != 400 || err == nil {
			t.Fatalf("%d %v", st, err)
		}
	})
}

// TestCSRWithoutCredentialPolicy: an enrollment without a credential
// policy issues nothing for a csr; --csr-without-policy picks whether the
// register is assigned without a chain (ignore) or refused (reject).
func TestCSRWithoutCredentialPolicy(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"ignore", "reject"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			sim := startSim(t, simtest.WithArgs("--csr-without-policy", mode))
			ca := simtest.NewDeviceCA(t)
			sim.EnrollGroup(t, "g", ca.Root)
			d := ca.Issue(t, "nopolicy-dev")
			k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "nopolicy-dev"}}, k)
			if err != nil {
				t.Fatal(err)
			}
			c, err := dialMQTT(t, sim.Ready.DPS.Addr, "nopolicy-dev", sim.Ready.IDScope+"/registrations/nopolicy-dev/api-version=2025-07-01-preview",
				sim.TLSConfig(sim.Ready.DPS.Host, d.TLSCertificate()), true)
			if err != nil {
				t.Fatal(err)
			}
			defer c.c.Disconnect(0)
			c.sub("$dps/registrations/res/#")
			c.pub("$dps/registrations/PUT/iotdps-register/?$rid=1", 1,
				[]byte(`{"registrationId":"nopolicy-dev","csr":"`+base64.StdEncoding.EncodeToString(der)+`"}`))
			if mode == "reject" {
				m := c.next("$dps/registrations/res/")
				if !strings.HasPrefix(m.topic, "$dps/registrations/res/400/") || !strings.Contains(string(m.payload), "credential policy") {
					t.Fatalf("reject: got %s %s; want 400 naming the credential policy", m.topic, m.payload)
				}
				return
			}
			var op opStatus
			_ = json.Unmarshal(c.next("$dps/registrations/res/202/").payload, &op)
			c.pub("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId="+op.OperationID, 1, nil)
			m := c.next("$dps/registrations/res/200/")
			if !strings.Contains(string(m.payload), `"assigned"`) || strings.Contains(string(m.payload), "issuedCertificateChain") {
				t.Fatalf("ignore: got %s; want assigned without issuedCertificateChain", m.payload)
			}
		})
	}
}
