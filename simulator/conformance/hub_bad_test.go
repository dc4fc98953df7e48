package conformance

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// hubDevice is a device that DPS has put on a hub.
type hubDevice struct {
	*deviceCert
	host string // assigned hub host
	name string // hub name on the control plane
	id   string // device ID
}

// provision registers a fresh device through DPS and returns it.
func (tg *target) provision(t testing.TB, ca *testCA, cn string) *hubDevice {
	t.Helper()
	dev := ca.issue(t, cn, leafOpts{})
	res := tg.mustRegister(t, dev)
	hd := &hubDevice{deviceCert: dev, host: jstr(res, "registrationState", "assignedHub"), id: jstr(res, "registrationState", "deviceId")}
	for _, h := range tg.ready.Hubs {
		if strings.EqualFold(h.Host, hd.host) {
			hd.name = h.Name
		}
	}
	if hd.name == "" {
		t.Fatalf("assignedHub %q is not in the ready line", hd.host)
	}
	return hd
}

// hubDial opens TLS to d's hub with d's certificate, failing the test on error.
func (tg *target) hubDial(t testing.TB, d *hubDevice) *rawConn {
	t.Helper()
	c, err := dialTLS(t, tg.hub(d.host), tg.roots, &d.TLS)
	if err != nil {
		t.Fatalf("TLS to hub %s: %v", d.host, err)
	}
	return c
}

// hubConnect opens a hub session as d and fails unless CONNACK is 0.
func (tg *target) hubConnect(t testing.TB, d *hubDevice) *rawConn {
	t.Helper()
	c := tg.hubDial(t, d)
	c.mustConnect(d.id, hubUser(d.host, d.id))
	return c
}

// hubAttempt connects with an arbitrary identity and returns CONNACK or the
// error that stopped it.
func (tg *target) hubAttempt(t testing.TB, host string, cert *tls.Certificate, clientID, username string) (byte, error) {
	t.Helper()
	c, err := dialTLS(t, tg.hub(host), tg.roots, cert)
	if err != nil {
		return 0, fmt.Errorf("TLS: %w", err)
	}
	defer c.close()
	return c.connect(clientID, username, false)
}

// wantConnack5 checks the only refusal IoT Hub uses: CONNACK 5.
func wantConnack5(t testing.TB, what string, code byte, err error) {
	t.Helper()
	switch {
	case err != nil && strings.HasPrefix(err.Error(), "TLS"):
		t.Errorf("%s: refused in the TLS handshake (%v); the hub completes mutual TLS and answers CONNACK 5", what, err)
	case err != nil:
		t.Errorf("%s: connection ended without CONNACK (%v); the hub answers CONNACK 5", what, err)
	case code != 5:
		t.Errorf("%s: CONNACK %d; the hub refuses with 5 only", what, code)
	}
}

// twinReply reads the next $iothub/twin/res/... publish.
func twinReply(c *rawConn) (status int, query, body string, err error) {
	for {
		p, err := c.nextPublish()
		if err != nil {
			return 0, "", "", err
		}
		rest, ok := strings.CutPrefix(p.TopicName, "$iothub/twin/res/")
		if !ok {
			continue
		}
		st, q, _ := strings.Cut(rest, "/?")
		fmt.Sscan(st, &status)
		return status, q, string(p.Payload), nil
	}
}

// TestHubErrorPaths sends bad input to a simulated IoT hub as a raw MQTT
// client over real TLS.
func TestHubErrorPaths(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance hub CA")
	tg.enrollGroup("hub-errors", ca.PEM, nil)

	tg.parallel(t, "username formats", func(t *testing.T, tg *target) { hubErrUsernameFormats(t, tg, ca) })
	tg.parallel(t, "client ID differs from device ID and CN", func(t *testing.T, tg *target) { hubErrClientIDMismatch(t, tg, ca) })
	tg.parallel(t, "device not registered on the hub", func(t *testing.T, tg *target) { hubErrUnknownDevice(t, tg, ca) })
	tg.parallel(t, "expired certificate for a registered device", func(t *testing.T, tg *target) { hubErrExpiredCertificate(t, tg, ca) })
	tg.parallel(t, "untrusted certificate with a registered CN", func(t *testing.T, tg *target) { hubErrUntrustedCertificate(t, tg, ca) })
	tg.parallel(t, "no client certificate", func(t *testing.T, tg *target) { hubErrNoClientCertificate(t, tg, ca) })
	tg.parallel(t, "revoked certificate", func(t *testing.T, tg *target) { hubErrRevokedCertificate(t, tg, ca) })
	tg.parallel(t, "second connection kicks the first", func(t *testing.T, tg *target) { hubErrSecondConnection(t, tg, ca) })
	tg.parallel(t, "telemetry QoS 0 and 1 with property bag", func(t *testing.T, tg *target) { hubErrTelemetry(t, tg, ca) })
	tg.parallel(t, "oversized telemetry closes the connection", func(t *testing.T, tg *target) { hubErrOversizedTelemetry(t, tg, ca) })
	for _, tc := range []struct{ name, topic string }{
		{"another device's telemetry topic", "devices/hub-someone-else/messages/events/"},
		{"undocumented topic", "foo/bar"},
		{"twin topic typo", "$iothub/twin/PATCH/properties/reportd/?$rid=1"},
		{"device-bound topic", "devices/%s/messages/devicebound/x"},
	} {
		t.Run("publish to "+tc.name+" closes the connection", func(t *testing.T) {
			tg := tg.on(t)
			t.Parallel()
			d := tg.provision(t, ca, "hub-topic-"+strings.ReplaceAll(tc.name, " ", "-")[:10])
			c := tg.hubConnect(t, d)
			topic := tc.topic
			if strings.Contains(topic, "%s") {
				topic = fmt.Sprintf(topic, d.id)
			}
			c.publish(topic, 1, false, []byte("x"))
			if err := c.expectClosed(); err != nil {
				t.Errorf("publish to %q: %v (only documented topics)", topic, err)
			}
		})
	}
	tg.parallel(t, "QoS 2 publish closes the connection", func(t *testing.T, tg *target) { hubErrQoS2Publish(t, tg, ca) })
	tg.parallel(t, "retained telemetry is forwarded with mqtt-retain", func(t *testing.T, tg *target) { hubErrRetained(t, tg, ca) })
	tg.parallel(t, "subscriptions", func(t *testing.T, tg *target) { hubErrSubscriptions(t, tg, ca) })
	tg.parallel(t, "twin GET, reported patch and malformed patch", func(t *testing.T, tg *target) { hubErrTwin(t, tg, ca) })
}

// hubErrUsernameFormats is the "username formats" subtest of TestHubErrorPaths.
func hubErrUsernameFormats(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-user-1")
	good := []string{
		hubUser(d.host, d.id),
		hubUser(d.host, d.id) + "&DeviceClientType=azure-iot-device%2F1.18.4",
		d.host + "/" + d.id + "/?api-version=2020-09-30&DeviceClientType=c&model-id=dtmi%3Acom%3Aexample%3Bthermo%3B1",
	}
	for _, u := range good {
		if code, err := tg.hubAttempt(t, d.host, &d.TLS, d.id, u); err != nil || code != 0 {
			t.Errorf("username %q: CONNACK %d, %v; want 0", u, code, err)
		}
	}
	bad := []string{
		d.host + "/" + d.id + "/api-version=" + hubAPI, // DPS style, no '?'
		d.host + "/" + d.id,
		"other-hub.azure-devices.net/" + d.id + "/?api-version=" + hubAPI,
		d.host + "/someone-else/?api-version=" + hubAPI,
		d.id,
		"",
	}
	for _, u := range bad {
		code, err := tg.hubAttempt(t, d.host, &d.TLS, d.id, u)
		wantConnack5(t, fmt.Sprintf("username %q", u), code, err)
	}
}

// hubErrClientIDMismatch is the "client ID differs from device ID and CN" subtest of TestHubErrorPaths.
func hubErrClientIDMismatch(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-cid-1")
	other := tg.provision(t, ca, "hub-cid-2")
	code, err := tg.hubAttempt(t, d.host, &d.TLS, "hub-cid-x", hubUser(d.host, d.id))
	wantConnack5(t, "ClientId other than the username's device", code, err)
	// Another real device's identity with our certificate.
	code, err = tg.hubAttempt(t, other.host, &d.TLS, other.id, hubUser(other.host, other.id))
	wantConnack5(t, "certificate of one device used for another", code, err)
}

// hubErrUnknownDevice is the "device not registered on the hub" subtest of TestHubErrorPaths.
func hubErrUnknownDevice(t *testing.T, tg *target, ca *testCA) {
	dev := ca.issue(t, "hub-never-1", leafOpts{})
	host := tg.ready.Hubs[0].Host
	code, err := tg.hubAttempt(t, host, &dev.TLS, dev.CN, hubUser(host, dev.CN))
	wantConnack5(t, "unknown device", code, err)
}

// hubErrExpiredCertificate is the "expired certificate for a registered device" subtest of TestHubErrorPaths.
func hubErrExpiredCertificate(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-expired-1")
	exp := ca.issue(t, d.CN, leafOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	code, err := tg.hubAttempt(t, d.host, &exp.TLS, d.id, hubUser(d.host, d.id))
	wantConnack5(t, "expired certificate", code, err)
}

// hubErrUntrustedCertificate is the "untrusted certificate with a registered CN" subtest of TestHubErrorPaths.
func hubErrUntrustedCertificate(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-untrusted-1")
	other := newTestCA(t, "rogue CA")
	rogue := other.issue(t, d.CN, leafOpts{})
	code, err := tg.hubAttempt(t, d.host, &rogue.TLS, d.id, hubUser(d.host, d.id))
	wantConnack5(t, "same CN from an unknown CA", code, err)
}

// hubErrNoClientCertificate is the "no client certificate" subtest of TestHubErrorPaths.
func hubErrNoClientCertificate(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-nocert-1")
	code, err := tg.hubAttempt(t, d.host, nil, d.id, hubUser(d.host, d.id))
	if err == nil && code == 0 {
		t.Errorf("hub accepted a session without a client certificate")
	}
}

// hubErrRevokedCertificate is the "revoked certificate" subtest of TestHubErrorPaths.
func hubErrRevokedCertificate(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-revoked-1")
	c := tg.hubConnect(t, d)
	tg.revokeCert(d.CertPEM)
	// A device disabled while connected is simply disconnected.
	if err := c.expectClosed(); err != nil {
		t.Errorf("connected device after revocation: %v", err)
	}
	code, err := tg.hubAttempt(t, d.host, &d.TLS, d.id, hubUser(d.host, d.id))
	wantConnack5(t, "revoked certificate", code, err)
}

// hubErrSecondConnection is the "second connection kicks the first" subtest of TestHubErrorPaths.
func hubErrSecondConnection(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-kick-1")
	first := tg.hubConnect(t, d)
	second := tg.hubConnect(t, d)
	if err := first.expectClosed(); err != nil {
		t.Errorf("first session after a second CONNECT: %v", err)
	}
	second.mustSubscribe("$iothub/twin/res/#")
}

// hubErrTelemetry is the "telemetry QoS 0 and 1 with property bag" subtest of TestHubErrorPaths.
func hubErrTelemetry(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-tel-1")
	c := tg.hubConnect(t, d)
	topic := "devices/" + d.id + "/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=raw-1&alarm=true&empty=&nullprop"
	id, err := c.publish(topic, 1, false, []byte(`{"a":1}`))
	if err == nil {
		err = c.expectPuback(id)
	}
	if err != nil {
		t.Fatalf("QoS 1 telemetry: %v", err)
	}
	if _, err := c.publish("devices/"+d.id+"/messages/events/", 0, false, []byte("plain")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both telemetry records", 30*time.Second, func() error {
		recs := tg.telemetry(d.name, d.id)
		var sawRaw, sawPlain bool
		for _, r := range recs {
			if jstr(r, "systemProperties", "messageId") == "raw-1" {
				sawRaw = true
				checkTelemetry(t, r, map[string]any{"messageId": "raw-1", "correlationId": "", "contentType": "application/json", "contentEncoding": "utf-8",
					"properties": map[string]any{"alarm": "true", "empty": ""}, "body": `{"a":1}`})
			}
			if jstr(r, "body") == "plain" {
				sawPlain = true
			}
		}
		if !sawRaw || !sawPlain {
			return fmt.Errorf("records %v", recs)
		}
		return nil
	})
}

// hubErrOversizedTelemetry is the "oversized telemetry closes the connection" subtest of TestHubErrorPaths.
func hubErrOversizedTelemetry(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-big-1")
	c := tg.hubConnect(t, d)
	// Just under the limit is accepted...
	id, err := c.publish("devices/"+d.id+"/messages/events/", 1, false, make([]byte, 250*1024))
	if err == nil {
		err = c.expectPuback(id)
	}
	if err != nil {
		t.Fatalf("250 KB telemetry: %v; the limit is 256 KB", err)
	}
	// ...and over it drops the session.
	if _, err := c.publish("devices/"+d.id+"/messages/events/", 1, false, make([]byte, 256*1024+1)); err != nil && !isClosed(err) {
		t.Fatal(err)
	}
	if err := c.expectClosed(); err != nil {
		t.Errorf("telemetry over 256 KB: %v", err)
	}
}

// hubErrQoS2Publish is the "QoS 2 publish closes the connection" subtest of TestHubErrorPaths.
func hubErrQoS2Publish(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-qos2-1")
	c := tg.hubConnect(t, d)
	c.publish("devices/"+d.id+"/messages/events/", 2, false, []byte("x"))
	if err := c.expectClosed(); err != nil {
		t.Errorf("QoS 2 telemetry: %v", err)
	}
}

// hubErrRetained is the "retained telemetry is forwarded with mqtt-retain" subtest of TestHubErrorPaths.
func hubErrRetained(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-retain-1")
	c := tg.hubConnect(t, d)
	if strings.Contains(os.Getenv("CONFORMANCE_SIM_ARGS"), "--hub-retain close") {
		// The issue text's variant (retain closes the connection), selected explicitly.
		c.publish("devices/"+d.id+"/messages/events/", 1, true, []byte("x"))
		if err := c.expectClosed(); err != nil {
			t.Errorf("retained telemetry with --hub-retain close: %v", err)
		}
		return
	}
	id, err := c.publish("devices/"+d.id+"/messages/events/%24.mid=ret-1", 1, true, []byte("kept?"))
	if err == nil {
		err = c.expectPuback(id)
	}
	if err != nil {
		t.Fatalf("retained telemetry: %v; the IoT Hub MQTT docs forward it with app property mqtt-retain", err)
	}
	waitFor(t, "retained message recorded", 30*time.Second, func() error {
		for _, r := range tg.telemetry(d.name, d.id) {
			if jstr(r, "body") == "kept?" {
				if jstr(r, "applicationProperties", "mqtt-retain") != "true" {
					return fmt.Errorf("record lacks mqtt-retain=true: %v", r)
				}
				return nil
			}
		}
		return fmt.Errorf("not recorded yet")
	})
	// The session stays usable.
	c.mustSubscribe("devices/" + d.id + "/messages/devicebound/#")
}

// hubErrSubscriptions is the "subscriptions" subtest of TestHubErrorPaths.
func hubErrSubscriptions(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-sub-1")
	c := tg.hubConnect(t, d)
	// sdk-for-c subscribes with devices/+/….
	for _, f := range []string{"devices/+/messages/devicebound/#", "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"} {
		code, err := c.subscribe(f, 2)
		if err != nil || code != 1 {
			t.Errorf("SUBSCRIBE %s QoS 2: code %d, %v; want granted 1", f, code, err)
		}
	}
	bad := tg.hubConnect(t, tg.provision(t, ca, "hub-sub-2"))
	code, err := bad.subscribe("#", 1)
	if err == nil {
		err = bad.expectClosed()
		if err != nil {
			t.Errorf("SUBSCRIBE #: SUBACK %d, then %v; the hub drops the connection", code, err)
		}
	}
}

// hubErrTwin is the "twin GET, reported patch and malformed patch" subtest of TestHubErrorPaths.
func hubErrTwin(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "hub-twin-1")
	c := tg.hubConnect(t, d)
	c.mustSubscribe("$iothub/twin/res/#")
	c.publish("$iothub/twin/GET/?$rid=g1", 0, false, nil)
	st, qs, body, err := twinReply(c)
	if err != nil || st != 200 || !strings.Contains(qs, "$rid=g1") || !strings.Contains(body, `"desired"`) || !strings.Contains(body, `"reported"`) {
		t.Errorf("twin GET: %d %q %q %v; want 200 with desired and reported", st, qs, body, err)
	}
	c.publish("$iothub/twin/PATCH/properties/reported/?$rid=p1", 0, false, []byte(`{"fw":"2.0"}`))
	st, qs, _, err = twinReply(c)
	if err != nil || st != 204 || !strings.Contains(qs, "$rid=p1") || !strings.Contains(qs, "$version=") {
		t.Errorf("reported patch: %d %q %v; want 204 with $rid and $version", st, qs, err)
	}
	c.publish("$iothub/twin/PATCH/properties/reported/?$rid=p2", 0, false, []byte(`{"fw":`))
	st, qs, _, err = twinReply(c)
	if err != nil || st != 400 || !strings.Contains(qs, "$rid=p2") {
		t.Errorf("malformed reported patch: %d %q %v; want 400", st, qs, err)
	}
	big := []byte(`{"blob":"` + strings.Repeat("x", 40*1024) + `"}`)
	c.publish("$iothub/twin/PATCH/properties/reported/?$rid=p3", 0, false, big)
	st, qs, _, err = twinReply(c)
	if err != nil || st < 400 || st >= 500 || !strings.Contains(qs, "$rid=p3") {
		t.Errorf("40 KB reported patch: %d %q %v; want a 4xx, reported properties are capped at 32 KB", st, qs, err)
	}
}
