package conformance

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// dpsOutcome is how DPS answered one attempt, at whichever layer it stopped.
type dpsOutcome struct {
	tlsErr  error // TLS handshake refused
	connack byte  // CONNACK code (0 = accepted)
	connErr error // connection ended before CONNACK / SUBACK
	replies []dpsReply
	closed  bool  // DPS closed the session after the request
	other   error // anything else (timeout, protocol confusion)
}

func (o dpsOutcome) String() string {
	switch {
	case o.tlsErr != nil:
		return "TLS handshake failed: " + o.tlsErr.Error()
	case o.connErr != nil:
		return "connection ended during CONNECT/SUBSCRIBE: " + o.connErr.Error()
	case o.connack != 0:
		return fmt.Sprintf("CONNACK %d", o.connack)
	}
	var parts []string
	for _, r := range o.replies {
		parts = append(parts, fmt.Sprintf("%s %s", r.topic, trunc(string(r.raw), 300)))
	}
	if o.closed {
		parts = append(parts, "connection closed")
	}
	if o.other != nil {
		parts = append(parts, "error: "+o.other.Error())
	}
	return "CONNACK 0; " + strings.Join(parts, "; ")
}

// last is the final reply, if any.
func (o dpsOutcome) last() *dpsReply {
	if len(o.replies) == 0 {
		return nil
	}
	return &o.replies[len(o.replies)-1]
}

// dpsAttempt connects with the given identity and, once accepted, sends
// one request on topic with body (a register unless topic says otherwise),
// following 202s with polls.
func (tg *target) dpsAttempt(t testing.TB, cert *tls.Certificate, clientID, username, topic string, qos byte, body []byte) dpsOutcome {
	t.Helper()
	var o dpsOutcome
	c, err := dialTLS(t, tg.dps(), tg.roots, cert)
	if err != nil {
		o.tlsErr = err
		return o
	}
	defer c.close()
	if o.connack, o.connErr = c.connect(clientID, username, true); o.connErr != nil || o.connack != 0 {
		return o
	}
	if code, err := c.subscribe("$dps/registrations/res/#", 1); err != nil || code > 1 {
		o.connErr = fmt.Errorf("SUBSCRIBE: code %d, %v", code, err)
		return o
	}
	if _, err := c.publish(topic, qos, false, body); err != nil {
		o.other = err
		return o
	}
	for i := 0; i < 6; i++ {
		p, err := c.nextPublish()
		if err != nil {
			if isClosed(err) {
				o.closed = true
			} else {
				o.other = err
			}
			return o
		}
		r, err := parseDPSReply(p.Payload, p.TopicName)
		if err != nil {
			o.other = err
			return o
		}
		o.replies = append(o.replies, r)
		if r.status != 202 {
			return o
		}
		poll := "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=p&operationId=" + jstr(r.body, "operationId")
		if _, err := c.publish(poll, 1, false, []byte(" ")); err != nil {
			o.other = err
			return o
		}
	}
	return o
}

func registerBody(regID string) []byte {
	b, _ := json.Marshal(map[string]string{"registrationId": regID})
	return b
}

const registerTopic = "$dps/registrations/PUT/iotdps-register/?$rid=bad-1"

// checkErrorBody checks a ProvisioningServiceErrorDetails body (docs/simulator.md, DPS "Errors"):
// errorCode = status*1000 + detail, trackingId, message, timestampUtc,
// and no operationId.
func checkErrorBody(t testing.TB, r dpsReply) {
	t.Helper()
	code, _ := jget(r.body, "errorCode").(float64)
	if int(code)/1000 != r.status {
		t.Errorf("error body errorCode %v does not match topic status %d: %s", jget(r.body, "errorCode"), r.status, r.raw)
	}
	for _, f := range []string{"trackingId", "message", "timestampUtc"} {
		if jstr(r.body, f) == "" {
			t.Errorf("error body lacks %s: %s", f, r.raw)
		}
	}
	if jget(r.body, "operationId") != nil {
		t.Errorf("error body carries operationId (an error body has none): %s", r.raw)
	}
}

// wantAuthRefusal accepts both forms DPS may use for a device it does not
// authenticate: CONNACK 5 (not confirmed for the real service) or 401 with
// errorCode 401002 on the register response; docs/simulator.md lists the
// --dps-id-mismatch switch. A refused TLS handshake is not what the
// service does: authorization happens at CONNECT.
func wantAuthRefusal(t testing.TB, what string, o dpsOutcome) {
	t.Helper()
	t.Logf("%s: %s", what, o)
	switch {
	case o.tlsErr != nil:
		t.Errorf("%s: refused in the TLS handshake (%v); DPS completes mutual TLS and refuses at the MQTT level", what, o.tlsErr)
	case o.connErr != nil:
		t.Errorf("%s: connection dropped before CONNACK (%v); want CONNACK 5 or 401 on register", what, o.connErr)
	case o.connack != 0:
		if o.connack != 5 {
			t.Errorf("%s: CONNACK %d; the service refuses with 5", what, o.connack)
		}
	default:
		r := o.last()
		if r == nil {
			t.Errorf("%s: CONNACK 0 and no register response (%s); want 401", what, o)
			return
		}
		if r.status != 401 {
			t.Errorf("%s: register answered %d; want 401: %s", what, r.status, r.raw)
			return
		}
		checkErrorBody(t, *r)
		if jget(r.body, "errorCode") != float64(401002) {
			t.Errorf("%s: errorCode %v, want 401002", what, jget(r.body, "errorCode"))
		}
	}
}

// TestDPSErrorPaths sends bad input to DPS as a raw MQTT client over real
// TLS and checks each answer against the documented service behaviour
// (docs/simulator.md, "DPS device endpoint").
func TestDPSErrorPaths(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance dps CA")
	tg.enrollGroup("dps-errors", ca.PEM, nil)
	scope := tg.ready.IDScope

	tg.parallel(t, "good registration has the documented shape", func(t *testing.T, tg *target) { dpsGoodShape(t, tg, ca, scope) })
	tg.parallel(t, "register at QoS 0 with empty poll body", func(t *testing.T, tg *target) { dpsQoS0EmptyPoll(t, tg, ca, scope) })
	tg.parallel(t, "malformed JSON", func(t *testing.T, tg *target) { dpsMalformedJSON(t, tg, ca, scope) })
	tg.parallel(t, "registrationId in body differs from username", func(t *testing.T, tg *target) { dpsBodyIDMismatch(t, tg, ca, scope) })

	for _, tc := range []struct{ name, user string }{
		{"username without api-version", scope + "/registrations/dps-user-1"},
		{"username with hub-style ?api-version", scope + "/registrations/dps-user-1/?api-version=" + dpsAPI},
		{"username with unknown api-version", scope + "/registrations/dps-user-1/api-version=1999-01-01"},
		{"username with wrong ID scope", "0ne00000000/registrations/dps-user-1/api-version=" + dpsAPI},
		{"username missing registrations segment", scope + "/dps-user-1/api-version=" + dpsAPI},
		{"empty username", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := tg.on(t)
			t.Parallel()
			dev := ca.issue(t, "dps-user-1", leafOpts{})
			o := tg.dpsAttempt(t, &dev.TLS, dev.CN, tc.user, registerTopic, 1, registerBody(dev.CN))
			t.Logf("%s", o)
			if r := o.last(); o.connack == 0 && o.tlsErr == nil && o.connErr == nil && (r == nil || r.status < 400) {
				t.Errorf("username %q accepted: %s; DPS refuses it", tc.user, o)
			}
			if o.tlsErr != nil {
				t.Errorf("refused in TLS (%v); the username is only seen at CONNECT", o.tlsErr)
			}
		})
	}
	tg.parallel(t, "username with ClientVersion is accepted", func(t *testing.T, tg *target) { dpsClientVersion(t, tg, ca, scope) })
	tg.parallel(t, "client ID differs from CN", func(t *testing.T, tg *target) { dpsClientIDMismatch(t, tg, ca, scope) })
	tg.parallel(t, "username registration ID differs from CN", func(t *testing.T, tg *target) { dpsUsernameIDMismatch(t, tg, ca, scope) })
	tg.parallel(t, "expired certificate", func(t *testing.T, tg *target) { dpsExpiredCertificate(t, tg, ca, scope) })
	tg.parallel(t, "not yet valid certificate", func(t *testing.T, tg *target) { dpsNotYetValid(t, tg, ca, scope) })
	tg.parallel(t, "untrusted certificate", func(t *testing.T, tg *target) { dpsUntrustedCertificate(t, tg, ca, scope) })
	tg.parallel(t, "self-signed certificate", func(t *testing.T, tg *target) { dpsSelfSignedCertificate(t, tg, ca, scope) })
	tg.parallel(t, "no client certificate", func(t *testing.T, tg *target) { dpsNoClientCertificate(t, tg, ca, scope) })
	tg.parallel(t, "revoked certificate", func(t *testing.T, tg *target) { dpsRevokedCertificate(t, tg, ca, scope) })
	tg.parallel(t, "disabled enrollment group", func(t *testing.T, tg *target) { dpsDisabledEnrollmentGroup(t, tg, ca, scope) })
	tg.parallel(t, "poll for unknown operation", func(t *testing.T, tg *target) { dpsUnknownOperation(t, tg, ca, scope) })
	tg.parallel(t, "polling faster than 5 per 10 s is throttled", func(t *testing.T, tg *target) { dpsPollThrottled(t, tg, ca, scope) })
	tg.parallel(t, "unknown topic", func(t *testing.T, tg *target) { dpsUnknownTopic(t, tg, ca, scope) })
	tg.parallel(t, "oversized register", func(t *testing.T, tg *target) { dpsOversizedRegister(t, tg, ca, scope) })
	tg.parallel(t, "subscribe QoS 2 is granted QoS 1", func(t *testing.T, tg *target) { dpsSubscribeQoS2(t, tg, ca, scope) })
	tg.parallel(t, "whitespace poll body and QoS of replies", func(t *testing.T, tg *target) { dpsWhitespacePoll(t, tg, ca, scope) })
}

// dpsGoodShape is the "good registration has the documented shape" subtest of TestDPSErrorPaths.
func dpsGoodShape(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-good-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN))
	t.Logf("%s", o)
	if len(o.replies) < 2 {
		t.Fatalf("want 202 then 200: %s", o)
	}
	first, last := o.replies[0], *o.last()
	if first.status != 202 || first.retryAfter == "" || jstr(first.body, "operationId") == "" || jstr(first.body, "status") != "assigning" {
		t.Errorf("first reply %s %s; want 202 with retry-after, operationId, status assigning", first.topic, first.raw)
	}
	for _, r := range o.replies {
		if r.rid != "bad-1" && r.rid != "p" {
			t.Errorf("reply %s does not echo $rid", r.topic)
		}
	}
	if last.status != 200 || jstr(last.body, "status") != "assigned" {
		t.Fatalf("final reply %s %s; want 200 assigned", last.topic, last.raw)
	}
	rs := jget(last.body, "registrationState")
	for _, f := range []string{"registrationId", "assignedHub", "deviceId", "status", "substatus", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"} {
		if jstr(rs, f) == "" {
			t.Errorf("registrationState lacks %s: %s", f, last.raw)
		}
	}
	if jstr(rs, "x509", "enrollmentGroupId") != "dps-errors" {
		t.Errorf("registrationState.x509.enrollmentGroupId = %q, want dps-errors", jstr(rs, "x509", "enrollmentGroupId"))
	}
	for _, f := range []string{"createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
		if _, err := time.Parse(time.RFC3339Nano, jstr(rs, f)); err != nil {
			t.Errorf("%s %q is not RFC 3339: %v", f, jstr(rs, f), err)
		}
	}
}

// dpsQoS0EmptyPoll is the "register at QoS 0 with empty poll body" subtest of TestDPSErrorPaths.
func dpsQoS0EmptyPoll(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-qos0-1", leafOpts{})
	c := tg.dpsConnect(t, &dev.TLS, dev.CN)
	r, err := c.dpsRequest("$dps/registrations/PUT/iotdps-register/?$rid=1", 0, registerBody(dev.CN))
	for i := 0; err == nil && r.status == 202 && i < 5; i++ {
		// $rid reused on purpose: sdk-for-c sends rid 1 for every request.
		r, err = c.dpsRequest("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId="+jstr(r.body, "operationId"), 0, nil)
	}
	if err != nil || r.status != 200 || jstr(r.body, "status") != "assigned" {
		t.Errorf("QoS 0 register / empty polls: %v %s %s", err, r.topic, r.raw)
	}
}

// dpsMalformedJSON is the "malformed JSON" subtest of TestDPSErrorPaths.
func dpsMalformedJSON(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-badjson-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, []byte(`{"registrationId":"dps-badjson-1"`))
	t.Logf("%s", o)
	r := o.last()
	if r == nil || r.status != 400 {
		t.Fatalf("malformed register body: %s; want 400 on the response topic", o)
	}
	checkErrorBody(t, *r)
}

// dpsBodyIDMismatch is the "registrationId in body differs from username" subtest of TestDPSErrorPaths.
func dpsBodyIDMismatch(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-bodyid-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody("someone-else"))
	t.Logf("%s", o)
	r := o.last()
	if r == nil || (r.status != 400 && r.status != 401) {
		t.Fatalf("mismatched registrationId: %s; want 400 or 401 (it must equal the username's)", o)
	}
	checkErrorBody(t, *r)
}

// dpsClientVersion is the "username with ClientVersion is accepted" subtest of TestDPSErrorPaths.
func dpsClientVersion(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-cv-1", leafOpts{})
	user := dpsUser(scope, dev.CN) + "&ClientVersion=azure-iot-provisioning-device%2F1.9.1"
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, user, registerTopic, 1, registerBody(dev.CN))
	if r := o.last(); r == nil || r.status != 200 || jstr(r.body, "status") != "assigned" {
		t.Errorf("&ClientVersion username: %s; want assigned", o)
	}
}

// dpsClientIDMismatch is the "client ID differs from CN" subtest of TestDPSErrorPaths.
func dpsClientIDMismatch(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-cid-1", leafOpts{})
	wantAuthRefusal(t, "ClientId other than CN", tg.dpsAttempt(t, &dev.TLS, "dps-cid-2", dpsUser(scope, "dps-cid-2"), registerTopic, 1, registerBody("dps-cid-2")))
}

// dpsUsernameIDMismatch is the "username registration ID differs from CN" subtest of TestDPSErrorPaths.
func dpsUsernameIDMismatch(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-cid-3", leafOpts{})
	wantAuthRefusal(t, "username regId other than CN", tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, "dps-cid-4"), registerTopic, 1, registerBody("dps-cid-4")))
}

// dpsExpiredCertificate is the "expired certificate" subtest of TestDPSErrorPaths.
func dpsExpiredCertificate(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-expired-1", leafOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)})
	wantAuthRefusal(t, "expired leaf", tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN)))
}

// dpsNotYetValid is the "not yet valid certificate" subtest of TestDPSErrorPaths.
func dpsNotYetValid(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-future-1", leafOpts{notBefore: time.Now().Add(24 * time.Hour), notAfter: time.Now().Add(48 * time.Hour)})
	wantAuthRefusal(t, "not-yet-valid leaf", tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN)))
}

// dpsUntrustedCertificate is the "untrusted certificate" subtest of TestDPSErrorPaths.
func dpsUntrustedCertificate(t *testing.T, tg *target, ca *testCA, scope string) {
	other := newTestCA(t, "not enrolled CA")
	dev := other.issue(t, "dps-untrusted-1", leafOpts{})
	wantAuthRefusal(t, "leaf from an unenrolled CA", tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN)))
}

// dpsSelfSignedCertificate is the "self-signed certificate" subtest of TestDPSErrorPaths.
func dpsSelfSignedCertificate(t *testing.T, tg *target, ca *testCA, scope string) {
	self := newTestCA(t, "dps-self-1")
	cert := tls.Certificate{Certificate: [][]byte{self.Cert.Raw}, PrivateKey: self.Key}
	wantAuthRefusal(t, "self-signed cert with no individual enrollment", tg.dpsAttempt(t, &cert, "dps-self-1", dpsUser(scope, "dps-self-1"), registerTopic, 1, registerBody("dps-self-1")))
}

// dpsNoClientCertificate is the "no client certificate" subtest of TestDPSErrorPaths.
func dpsNoClientCertificate(t *testing.T, tg *target, ca *testCA, scope string) {
	o := tg.dpsAttempt(t, nil, "dps-nocert-1", dpsUser(scope, "dps-nocert-1"), registerTopic, 1, registerBody("dps-nocert-1"))
	t.Logf("%s", o)
	// With X.509 required and no certificate presented, the connection is rejected.
	if o.tlsErr == nil && o.connErr == nil && o.connack == 0 {
		if r := o.last(); r == nil || r.status != 401 {
			t.Errorf("no client certificate: %s; want rejection", o)
		}
	}
}

// dpsRevokedCertificate is the "revoked certificate" subtest of TestDPSErrorPaths.
func dpsRevokedCertificate(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-revoked-1", leafOpts{})
	tg.revokeCert(dev.CertPEM)
	wantAuthRefusal(t, "revoked leaf", tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN)))
}

// dpsDisabledEnrollmentGroup is the "disabled enrollment group" subtest of TestDPSErrorPaths.
func dpsDisabledEnrollmentGroup(t *testing.T, tg *target, ca *testCA, scope string) {
	dca := newTestCA(t, "disabled group CA")
	tg.enrollGroup("dps-disabled", dca.PEM, map[string]any{"provisioningStatus": "disabled"})
	dev := dca.issue(t, "dps-disabled-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, registerBody(dev.CN))
	t.Logf("%s", o)
	// Not confirmed for the real service: status "disabled", or 401 on register
	// (switch --disabled-enrollment).
	r := o.last()
	switch {
	case r != nil && r.status == 200 && jstr(r.body, "status") == "disabled":
	case r != nil && r.status == 401:
		checkErrorBody(t, *r)
	default:
		t.Errorf("disabled enrollment: %s; want status disabled or 401", o)
	}
}

// dpsUnknownOperation is the "poll for unknown operation" subtest of TestDPSErrorPaths.
func dpsUnknownOperation(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-unknownop-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN),
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=u&operationId=4.0000000000000000.00000000-0000-0000-0000-000000000000", 1, nil)
	t.Logf("%s", o)
	r := o.last()
	if r == nil || r.status != 404 {
		t.Fatalf("poll for an operation that does not exist: %s; want 404", o)
	}
	checkErrorBody(t, *r)
}

// dpsPollThrottled is the "polling faster than 5 per 10 s is throttled" subtest of TestDPSErrorPaths.
func dpsPollThrottled(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-throttle-1", leafOpts{})
	c := tg.dpsConnect(t, &dev.TLS, dev.CN)
	r, err := c.dpsRequest(registerTopic, 1, registerBody(dev.CN))
	if err != nil || r.status != 202 {
		t.Fatalf("register: %v %s", err, r.raw)
	}
	op := jstr(r.body, "operationId")
	var statuses []int
	for i := 0; i < 6; i++ {
		r, err = c.dpsRequest("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=t&operationId="+op, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, r.status)
	}
	// 5 polls / 10 s / device; over the limit ⇒ 429 with retry-after.
	if r.status != 429 || r.retryAfter == "" {
		t.Fatalf("6 polls at once: statuses %v, last %s %s; want the 6th to be 429 with retry-after", statuses, r.topic, r.raw)
	}
	checkErrorBody(t, r)
}

// dpsUnknownTopic is the "unknown topic" subtest of TestDPSErrorPaths.
func dpsUnknownTopic(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-topic-1", leafOpts{})
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), "$dps/registrations/PUT/iotdps-bogus/?$rid=1", 1, registerBody(dev.CN))
	t.Logf("%s", o)
	// Only documented topics work. Closing, or a 4xx error reply, both refuse it.
	if r := o.last(); !o.closed && (r == nil || r.status < 400) {
		t.Errorf("publish to an undocumented DPS topic: %s; want the connection closed or a 4xx", o)
	}
}

// dpsOversizedRegister is the "oversized register" subtest of TestDPSErrorPaths.
func dpsOversizedRegister(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-big-1", leafOpts{})
	body := []byte(`{"registrationId":"dps-big-1","payload":{"pad":"` + strings.Repeat("x", 100*1024) + `"}}`)
	o := tg.dpsAttempt(t, &dev.TLS, dev.CN, dpsUser(scope, dev.CN), registerTopic, 1, body)
	t.Logf("%s", o)
	// The largest DPS message is 96 KB.
	if r := o.last(); !o.closed && (r == nil || r.status < 400) {
		t.Errorf("100 KB register: %s; want refusal (closed or 4xx), max is 96 KB", o)
	}
}

// dpsSubscribeQoS2 is the "subscribe QoS 2 is granted QoS 1" subtest of TestDPSErrorPaths.
func dpsSubscribeQoS2(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-subqos-1", leafOpts{})
	c, err := dialTLS(t, tg.dps(), tg.roots, &dev.TLS)
	if err != nil {
		t.Fatal(err)
	}
	c.mustConnect(dev.CN, dpsUser(scope, dev.CN))
	code, err := c.subscribe("$dps/registrations/res/#", 2)
	if err != nil || code != 1 {
		t.Errorf("SUBSCRIBE QoS 2: code %d, %v; want granted 1", code, err)
	}
}

// dpsWhitespacePoll is the "whitespace poll body and QoS of replies" subtest of TestDPSErrorPaths.
func dpsWhitespacePoll(t *testing.T, tg *target, ca *testCA, scope string) {
	dev := ca.issue(t, "dps-ws-1", leafOpts{})
	c := tg.dpsConnect(t, &dev.TLS, dev.CN)
	if _, err := c.publish(registerTopic, 1, false, registerBody(dev.CN)); err != nil {
		t.Fatal(err)
	}
	p, err := c.nextPublish()
	if err != nil {
		t.Fatal(err)
	}
	if p.Qos > 1 {
		t.Errorf("DPS replied at QoS %d; at most min(granted, 1)", p.Qos)
	}
	r, _ := parseDPSReply(p.Payload, p.TopicName)
	for i := 0; r.status == 202 && i < 5; i++ {
		r, err = c.dpsRequest("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=ws&operationId="+jstr(r.body, "operationId"), 1, []byte(" \n\t"))
		if err != nil {
			t.Fatal(err)
		}
	}
	if r.status != 200 {
		t.Errorf("poll with whitespace body: %s %s", r.topic, r.raw)
	}
}
