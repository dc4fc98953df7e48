package simulator_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"devid/simulator/simtest"
)

// msg is one received publish.
type msg struct {
	topic   string
	payload []byte
}

// mqttClient is a thin paho wrapper for raw protocol tests.
type mqttClient struct {
	t    testing.TB
	c    paho.Client
	msgs chan msg
	lost chan error
}

func dialMQTT(t testing.TB, addr, clientID, username string, tlsCfg *tls.Config, clean bool) (*mqttClient, error) {
	t.Helper()
	m := &mqttClient{t: t, msgs: make(chan msg, 100), lost: make(chan error, 1)}
	o := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).SetUsername(username).
		SetTLSConfig(tlsCfg).SetProtocolVersion(4).SetCleanSession(clean).SetAutoReconnect(false).
		SetConnectRetry(false).SetConnectTimeout(10 * time.Second).SetKeepAlive(60 * time.Second).
		// In order: tests check the order the service sends in (202 before
		// 200); the handler never blocks while msgs has room.
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, p paho.Message) {
			m.msgs <- msg{p.Topic(), p.Payload()}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case m.lost <- err:
			default:
			}
		})
	m.c = paho.NewClient(o)
	tok := m.c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("connect timeout")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { m.c.Disconnect(0) })
	return m, nil
}

func (m *mqttClient) sub(filter string) {
	m.t.Helper()
	tok := m.c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		m.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (m *mqttClient) pub(topic string, qos byte, body []byte) {
	m.t.Helper()
	tok := m.c.Publish(topic, qos, false, body)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		m.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (m *mqttClient) next(prefix string) msg {
	m.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case x := <-m.msgs:
			if strings.HasPrefix(x.topic, prefix) {
				return x
			}
		case <-deadline:
			m.t.Fatalf("no message with topic prefix %q", prefix)
		}
	}
}

// waitLost waits until the server closes the connection.
func (m *mqttClient) waitLost() {
	m.t.Helper()
	select {
	case <-m.lost:
	case <-time.After(15 * time.Second):
		m.t.Fatal("connection not closed by the server")
	}
}

type opStatus struct {
	OperationID       string         `json:"operationId"`
	Status            string         `json:"status"`
	RegistrationState map[string]any `json:"registrationState"`
}

func dpsUser(sim *simtest.Sim, reg string) string {
	return sim.Ready.IDScope + "/registrations/" + reg + "/api-version=2019-03-31&ClientVersion=devid-test%2F1"
}

// register runs the DPS flow and returns the final operation status.
func register(t *testing.T, sim *simtest.Sim, dev *simtest.DeviceCert, body string) opStatus {
	t.Helper()
	reg := dev.Leaf.Subject.CommonName
	c, err := dialMQTT(t, sim.Ready.DPS.Addr, reg, dpsUser(sim, reg), sim.TLSConfig(sim.Ready.DPS.Host, dev.TLSCertificate()), true)
	if err != nil {
		t.Fatalf("DPS connect: %v", err)
	}
	defer c.c.Disconnect(0)
	c.sub("$dps/registrations/res/#")
	if body == "" {
		body = `{"registrationId":"` + reg + `"}`
	}
	c.pub("$dps/registrations/PUT/iotdps-register/?$rid=r1", 1, []byte(body))
	for i := 0; i < 10; i++ {
		r := c.next("$dps/registrations/res/")
		var st opStatus
		if err := json.Unmarshal(r.payload, &st); err != nil {
			t.Fatalf("response %s: %v", r.payload, err)
		}
		if !strings.HasPrefix(r.topic, "$dps/registrations/res/202/") {
			if !strings.Contains(r.topic, "$rid=") {
				t.Fatalf("no $rid in %s", r.topic)
			}
			if st.OperationID == "" {
				t.Fatalf("terminal response %s %s", r.topic, r.payload)
			}
			return st
		}
		if !strings.Contains(r.topic, "retry-after=") {
			t.Fatalf("202 without retry-after: %s", r.topic)
		}
		c.pub("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId="+st.OperationID, 0, []byte(" "))
	}
	t.Fatal("no terminal DPS status")
	return opStatus{}
}

func TestEndToEndGroupRegistrationAndHub(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "group1", ca.Root, simtest.InitialDesired(map[string]any{"interval": 5}))
	dev := ca.Issue(t, "device-e2e-1")
	st := register(t, sim, dev, "")
	if st.Status != "assigned" {
		t.Fatalf("status %q: %+v", st.Status, st)
	}
	rs := st.RegistrationState
	for _, k := range []string{"registrationId", "assignedHub", "deviceId", "status", "substatus", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag", "x509"} {
		if _, ok := rs[k]; !ok {
			t.Errorf("registrationState lacks %q: %v", k, rs)
		}
	}
	hub := sim.Hub("")
	if rs["assignedHub"] != hub.Host || rs["deviceId"] != "device-e2e-1" || rs["substatus"] != "initialAssignment" {
		t.Fatalf("registrationState %v", rs)
	}
	// Hub.
	user := hub.Host + "/device-e2e-1/?api-version=2021-04-12&DeviceClientType=devid-test"
	h, err := dialMQTT(t, hub.Addr, "device-e2e-1", user, sim.TLSConfig(hub.Host, dev.TLSCertificate()), false)
	if err != nil {
		t.Fatalf("hub connect: %v", err)
	}
	h.sub("$iothub/twin/res/#")
	h.sub("$iothub/methods/POST/#")
	h.sub("devices/device-e2e-1/messages/devicebound/#")
	h.sub("$iothub/twin/PATCH/properties/desired/#")
	h.pub("devices/device-e2e-1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m1&alarm=true", 1, []byte(`{"t":21.5}`))
	tel := sim.WaitTelemetry(t, "device-e2e-1", 1, 10*time.Second)
	if tel[0].Body != `{"t":21.5}` || tel[0].SystemProperties["contentType"] != "application/json" ||
		tel[0].SystemProperties["messageId"] != "m1" || tel[0].ApplicationProperties["alarm"] != "true" {
		t.Fatalf("telemetry %+v", tel[0])
	}
	// Twin GET has the initial desired properties.
	h.pub("$iothub/twin/GET/?$rid=g1", 0, nil)
	r := h.next("$iothub/twin/res/")
	if !strings.HasPrefix(r.topic, "$iothub/twin/res/200/?$rid=g1") || !strings.Contains(string(r.payload), `"interval":5`) {
		t.Fatalf("twin GET: %s %s", r.topic, r.payload)
	}
	h.pub("$iothub/twin/PATCH/properties/reported/?$rid=p1", 0, []byte(`{"fw":"1.0"}`))
	r = h.next("$iothub/twin/res/")
	if !strings.HasPrefix(r.topic, "$iothub/twin/res/204/?$rid=p1&$version=") {
		t.Fatalf("reported patch: %s", r.topic)
	}
	// Desired update pushed.
	sim.MustDo("PATCH", "/twins/device-e2e-1", map[string]any{"properties": map[string]any{"desired": map[string]any{"interval": 10}}}, nil)
	r = h.next("$iothub/twin/PATCH/properties/desired/")
	if !strings.Contains(string(r.payload), `"interval":10`) || !strings.Contains(r.topic, "$version=") {
		t.Fatalf("desired push: %s %s", r.topic, r.payload)
	}
	// C2D with properties.
	sim.SendC2D(t, "", "device-e2e-1", "hello", map[string]string{"k": "v w"})
	r = h.next("devices/device-e2e-1/messages/devicebound/")
	if string(r.payload) != "hello" || !strings.Contains(r.topic, "k=v%20w") || !strings.Contains(r.topic, "%24.mid=") {
		t.Fatalf("c2d: %s %s", r.topic, r.payload)
	}
	// Direct method.
	var wg sync.WaitGroup
	wg.Add(1)
	var res map[string]any
	var merr error
	go func() {
		defer wg.Done()
		_, merr = sim.Do("POST", "/twins/device-e2e-1/methods", map[string]any{"methodName": "reboot", "payload": map[string]int{"delay": 1}, "responseTimeoutInSeconds": 10}, &res)
	}()
	r = h.next("$iothub/methods/POST/reboot/")
	rid := r.topic[strings.Index(r.topic, "$rid=")+5:]
	h.pub("$iothub/methods/res/201/?$rid="+rid, 0, []byte(`{"ok":true}`))
	wg.Wait()
	if merr != nil || res["status"] != float64(201) {
		t.Fatalf("method: %v %v", merr, res)
	}
}

// TestWebSocket registers over DPS WSS and connects to the hub over WSS.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	dev := ca.Issue(t, "ws-dev")
	dial := func(addr, id, user string, host string) paho.Client {
		o := paho.NewClientOptions().AddBroker("wss://" + addr + "/$iothub/websocket").SetClientID(id).SetUsername(user).
			SetTLSConfig(sim.TLSConfig(host, dev.TLSCertificate())).SetProtocolVersion(4).SetAutoReconnect(false)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("wss connect %s: %v", addr, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	got := make(chan msg, 10)
	c := dial(sim.Ready.DPS.WSAddr, "ws-dev", dpsUser(sim, "ws-dev"), sim.Ready.DPS.Host)
	c.Subscribe("$dps/registrations/res/#", 1, func(_ paho.Client, m paho.Message) { got <- msg{m.Topic(), m.Payload()} }).Wait()
	c.Publish("$dps/registrations/PUT/iotdps-register/?$rid=1", 1, false, `{"registrationId":"ws-dev"}`).Wait()
	var st opStatus
	for st.Status != "assigned" {
		select {
		case m := <-got:
			if err := json.Unmarshal(m.payload, &st); err != nil {
				t.Fatal(err)
			}
			if st.Status == "assigning" {
				c.Publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId="+st.OperationID, 0, false, "").Wait()
			}
		case <-time.After(20 * time.Second):
			t.Fatal("no DPS answer over WebSocket")
		}
	}
	h := sim.Hub("")
	hc := dial(h.WSAddr, "ws-dev", hubUser(h, "ws-dev"), h.Host)
	hc.Publish("devices/ws-dev/messages/events/", 1, false, "over-ws").Wait()
	if tel := sim.WaitTelemetry(t, "ws-dev", 1, 10*time.Second); tel[0].Body != "over-ws" {
		t.Fatalf("telemetry %+v", tel)
	}
}

// TestHubCertificateRenewal exercises the $iothub/credentials renewal preview.
func TestHubCertificateRenewal(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	dev := ca.Issue(t, "renew-dev")
	if st := register(t, sim, dev, ""); st.Status != "assigned" {
		t.Fatal(st)
	}
	h := sim.Hub("")
	user := h.Host + "/renew-dev/?api-version=2025-08-01-preview"
	c, err := dialMQTT(t, h.Addr, "renew-dev", user, sim.TLSConfig(h.Host, dev.TLSCertificate()), true)
	if err != nil {
		t.Fatal(err)
	}
	c.sub("$iothub/credentials/res/#")
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "renew-dev"}}, k)
	c.pub("$iothub/credentials/POST/issueCertificate/?$rid=req-1", 1,
		[]byte(`{"id":"renew-dev","csr":"`+base64.StdEncoding.EncodeToString(der)+`"}`))
	if m := c.next("$iothub/credentials/res/"); !strings.HasPrefix(m.topic, "$iothub/credentials/res/202/?$rid=req-1") || !strings.Contains(string(m.payload), "operationExpires") {
		t.Fatalf("%s %s", m.topic, m.payload)
	}
	m := c.next("$iothub/credentials/res/")
	var chain []string
	if !strings.HasPrefix(m.topic, "$iothub/credentials/res/200/") || json.Unmarshal(m.payload, &chain) != nil || len(chain) != 3 {
		t.Fatalf("%s %s", m.topic, m.payload)
	}
	var certs []*x509.Certificate
	for _, b := range chain {
		d, _ := base64.StdEncoding.DecodeString(b)
		cert, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	c.c.Disconnect(0)
	renewed := &simtest.DeviceCert{Leaf: certs[0], Key: k, Chain: certs[:2]}
	if _, err := dialMQTT(t, h.Addr, "renew-dev", user, sim.TLSConfig(h.Host, renewed.TLSCertificate()), true); err != nil {
		t.Fatalf("connect with renewed certificate: %v", err)
	}
	// Bad CSR.
	c2, err := dialMQTT(t, h.Addr, "renew-dev", user, sim.TLSConfig(h.Host, renewed.TLSCertificate()), true)
	if err != nil {
		t.Fatal(err)
	}
	c2.sub("$iothub/credentials/res/#")
	c2.pub("$iothub/credentials/POST/issueCertificate/?$rid=req-2", 1, []byte(`{"id":"renew-dev","csr":"!!"}`))
	if m := c2.next("$iothub/credentials/res/"); !strings.HasPrefix(m.topic, "$iothub/credentials/res/400/") || !strings.Contains(string(m.payload), "FailedToDecodeCsr") {
		t.Fatalf("%s %s", m.topic, m.payload)
	}
}
