package conformance

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestHubWire checks, with a raw client, the exact wire form of what the hub
// sends a device: C2D topics and QoS, the offline C2D queue, direct method
// requests, desired-property pushes, wills and the keep-alive timeout.
func TestHubWire(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance wire CA")
	tg.enrollGroup("hub-wire", ca.PEM, nil)

	tg.parallel(t, "C2D topic, QoS and properties", func(t *testing.T, tg *target) { wireC2D(t, tg, ca) })
	tg.parallel(t, "C2D queued while offline with CleanSession 0", func(t *testing.T, tg *target) { wireC2DOffline(t, tg, ca) })
	tg.parallel(t, "packet identifiers are independent per direction", func(t *testing.T, tg *target) { wirePacketIDs(t, tg, ca) })
	tg.parallel(t, "direct method wire, timeout and offline device", func(t *testing.T, tg *target) { wireDirectMethod(t, tg, ca) })
	tg.parallel(t, "desired property push", func(t *testing.T, tg *target) { wireDesiredPush(t, tg, ca) })
	tg.parallel(t, "will is recorded as telemetry", func(t *testing.T, tg *target) { wireWill(t, tg, ca) })
	tg.parallel(t, "disabled device is disconnected and refused", func(t *testing.T, tg *target) { wireDisabledDevice(t, tg, ca) })
	tg.parallel(t, "keep-alive expiry closes the connection", func(t *testing.T, tg *target) { wireKeepAlive(t, tg, ca) })
}

// wireC2D is the "C2D topic, QoS and properties" subtest of TestHubWire.
func wireC2D(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-c2d-1")
	c := tg.hubConnect(t, d)
	c.mustSubscribe("devices/" + d.id + "/messages/devicebound/#")
	tg.sendC2D(d.name, d.id, map[string]any{"payload": "ping", "messageId": "m-1", "correlationId": "c-1", "ack": "full", "properties": map[string]any{"color": "red blue"}})
	p, err := c.nextPublish()
	if err != nil {
		t.Fatal(err)
	}
	prefix := "devices/" + d.id + "/messages/devicebound/"
	if !strings.HasPrefix(p.TopicName, prefix) || p.Qos != 1 || string(p.Payload) != "ping" {
		t.Fatalf("C2D publish %q QoS %d %q; want QoS 1 under %s", p.TopicName, p.Qos, p.Payload, prefix)
	}
	bag := strings.TrimPrefix(p.TopicName, prefix)
	if !strings.Contains(bag, "%24.mid=") || !strings.Contains(bag, "%24.to=") {
		t.Errorf("C2D property bag %q lacks percent-encoded %%24.mid / %%24.to (observed topic)", bag)
	}
	v, err := url.ParseQuery(bag)
	if err != nil {
		t.Fatalf("C2D property bag %q: %v", bag, err)
	}
	want := map[string]string{"$.mid": "m-1", "$.cid": "c-1", "$.to": "/devices/" + d.id + "/messages/deviceBound", "iothub-ack": "full", "color": "red blue"}
	for k, w := range want {
		if got := v.Get(k); got != w {
			t.Errorf("C2D property %s = %q, want %q (topic %s)", k, got, w, p.TopicName)
		}
	}
}

// wireC2DOffline is the "C2D queued while offline with CleanSession 0" subtest of TestHubWire.
func wireC2DOffline(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-c2d-2")
	c := tg.hubConnectPersistent(t, d)
	c.mustSubscribe("devices/" + d.id + "/messages/devicebound/#")
	c.write(packets.NewControlPacket(packets.Disconnect))
	c.close()
	tg.waitOffline(t, d)
	tg.sendC2D(d.name, d.id, map[string]any{"payload": "while you were out", "messageId": "q-1"})
	c2 := tg.hubConnectPersistent(t, d)
	c2.mustSubscribe("devices/" + d.id + "/messages/devicebound/#")
	p, err := c2.nextPublish()
	if err != nil || string(p.Payload) != "while you were out" {
		t.Fatalf("queued C2D after reconnect: %v %v; want it delivered", p, err)
	}
	tg.waitC2DDone(t, "C2D queue empty after PUBACK", d)
}

// wirePacketIDs is the "packet identifiers are independent per direction" subtest of TestHubWire.
func wirePacketIDs(t *testing.T, tg *target, ca *testCA) {
	// MQTT 3.1.1 (OASIS standard, section 2.3.1): client and server assign packet identifiers
	// independently. A queued C2D (server ID n) and the device's own
	// QoS 1 telemetry with the same ID n must both complete.
	d := tg.provision(t, ca, "wire-pid-1")
	c := tg.hubConnectPersistent(t, d)
	c.mustSubscribe("devices/" + d.id + "/messages/devicebound/#")
	tg.sendC2D(d.name, d.id, map[string]any{"payload": "c2d", "messageId": "pid-1"})
	pk, err := c.read()
	if err != nil {
		t.Fatal(err)
	}
	p, ok := pk.(*packets.PublishPacket)
	if !ok || p.Qos != 1 {
		t.Fatalf("want the C2D PUBLISH at QoS 1, got %v", pk)
	}
	if _, dev := tg.device(d.name, d.id); jget(dev, "cloudToDeviceMessageCount") != float64(1) {
		t.Fatalf("delivered, not yet PUBACKed C2D: cloudToDeviceMessageCount %v, want 1", jget(dev, "cloudToDeviceMessageCount"))
	}
	// Telemetry reusing the C2D's packet ID before we PUBACK the C2D.
	tp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	tp.TopicName, tp.Qos, tp.MessageID, tp.Payload = "devices/"+d.id+"/messages/events/%24.mid=pid-tel", 1, p.MessageID, []byte("tel")
	if err := c.write(tp); err != nil {
		t.Fatal(err)
	}
	if err := c.expectPuback(p.MessageID); err != nil {
		t.Fatalf("PUBACK for telemetry with ID %d: %v", p.MessageID, err)
	}
	if _, dev := tg.device(d.name, d.id); jget(dev, "cloudToDeviceMessageCount") != float64(1) {
		t.Errorf("C2D counted as completed by the device's own PUBLISH with the same ID: cloudToDeviceMessageCount %v, want 1 until the device PUBACKs it",
			jget(dev, "cloudToDeviceMessageCount"))
	}
	if err := c.ack(p); err != nil {
		t.Fatal(err)
	}
	tg.waitC2DDone(t, "C2D completed after its PUBACK", d)
}

// wireDirectMethod is the "direct method wire, timeout and offline device" subtest of TestHubWire.
func wireDirectMethod(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-method-1")
	c := tg.hubConnect(t, d)
	c.mustSubscribe("$iothub/methods/POST/#")
	type answer struct {
		st  int
		res map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		st, res := tg.invokeMethod(d.name, d.id, "getInfo", map[string]any{"verbose": true}, 10)
		done <- answer{st, res}
	}()
	p, err := c.nextPublish()
	if err != nil {
		t.Fatal(err)
	}
	rest, ok := strings.CutPrefix(p.TopicName, "$iothub/methods/POST/getInfo/?")
	v, _ := url.ParseQuery(rest)
	if !ok || v.Get("$rid") == "" || p.Qos != 0 || string(p.Payload) != `{"verbose":true}` {
		t.Fatalf("method request %q QoS %d %q; want $iothub/methods/POST/getInfo/?$rid=… at QoS 0 with the payload", p.TopicName, p.Qos, p.Payload)
	}
	c.publish("$iothub/methods/res/299/?$rid="+v.Get("$rid"), 0, false, []byte(`{"fw":"1.0"}`))
	a := <-done
	if a.st != 200 || jget(a.res, "status") != float64(299) || jstr(a.res, "payload", "fw") != "1.0" {
		t.Errorf("service saw HTTP %d %v; want 200 {status 299, payload {fw 1.0}}", a.st, a.res)
	}
	// Device never answers: 504 after responseTimeoutInSeconds (minimum 5 s).
	st, res := tg.invokeMethod(d.name, d.id, "ignored", nil, 5)
	if st != 504 {
		t.Errorf("unanswered method: HTTP %d %v; want 504 (504101)", st, res)
	}
	c.close()
	tg.waitOffline(t, d)
	if st, res := tg.invokeMethod(d.name, d.id, "getInfo", nil, 5); st != 404 {
		t.Errorf("method on a disconnected device: HTTP %d %v; want 404", st, res)
	}
}

// wireDesiredPush is the "desired property push" subtest of TestHubWire.
func wireDesiredPush(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-desired-1")
	c := tg.hubConnect(t, d)
	c.mustSubscribe("$iothub/twin/PATCH/properties/desired/#")
	tg.patchDesired(d.name, d.id, map[string]any{"mode": "eco", "gone": nil})
	p, err := c.nextPublish()
	if err != nil {
		t.Fatal(err)
	}
	rest, ok := strings.CutPrefix(p.TopicName, "$iothub/twin/PATCH/properties/desired/?")
	v, _ := url.ParseQuery(rest)
	if !ok || v.Get("$version") == "" || p.Qos != 0 {
		t.Fatalf("desired push %q QoS %d; want $iothub/twin/PATCH/properties/desired/?$version=n at QoS 0", p.TopicName, p.Qos)
	}
	body := string(p.Payload)
	if !strings.Contains(body, `"mode":"eco"`) || !strings.Contains(body, `"$version":`+v.Get("$version")) {
		t.Errorf("desired push body %s; want the changed members and $version %s", body, v.Get("$version"))
	}
}

// wireWill is the "will is recorded as telemetry" subtest of TestHubWire.
func wireWill(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-will-1")
	c := tg.hubConnectRaw(t, d, func(p *packets.ConnectPacket) {
		p.WillFlag, p.WillQos, p.WillTopic, p.WillMessage = true, 1, "devices/"+d.id+"/messages/events/", []byte("gone")
	})
	c.close() // no DISCONNECT: the will fires
	waitFor(t, "will recorded", 30*time.Second, func() error {
		for _, r := range tg.telemetry(d.name, d.id) {
			if jstr(r, "body") == "gone" {
				if jstr(r, "applicationProperties", "iothub-MessageType") != "Will" {
					return fmt.Errorf("will record lacks iothub-MessageType=Will: %v", r)
				}
				return nil
			}
		}
		return fmt.Errorf("no will record yet")
	})
}

// wireDisabledDevice is the "disabled device is disconnected and refused" subtest of TestHubWire.
func wireDisabledDevice(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-disabled-1")
	c := tg.hubConnect(t, d)
	tg.mustDo("POST", "/sim/devices/"+url.PathEscape(d.name)+"/"+url.PathEscape(d.id)+"/disable", nil, nil)
	if err := c.expectClosed(); err != nil {
		t.Errorf("device disabled while connected: %v (simply disconnected)", err)
	}
	code, err := tg.hubAttempt(t, d.host, &d.TLS, d.id, hubUser(d.host, d.id))
	wantConnack5(t, "disabled device", code, err)
}

// wireKeepAlive is the "keep-alive expiry closes the connection" subtest of TestHubWire.
func wireKeepAlive(t *testing.T, tg *target, ca *testCA) {
	d := tg.provision(t, ca, "wire-keepalive-1")
	c := tg.hubConnectRaw(t, d, func(p *packets.ConnectPacket) { p.Keepalive = 1 })
	// Silent client: the hub closes after 1.5 × keep-alive; expectClosed bounds the wait.
	if err := c.expectClosed(); err != nil {
		t.Errorf("silent client with keep-alive 1 s: %v", err)
	}
}

// hubConnectPersistent is hubConnect with CleanSession 0, so the hub keeps
// the session (subscriptions, queued C2D) across reconnects.
func (tg *target) hubConnectPersistent(t testing.TB, d *hubDevice) *rawConn {
	t.Helper()
	c := tg.hubDial(t, d)
	if code, err := c.connect(d.id, hubUser(d.host, d.id), false); err != nil || code != 0 {
		t.Fatalf("CONNECT %s with CleanSession 0: CONNACK %d, %v", d.id, code, err)
	}
	return c
}

// hubConnectRaw dials the hub as d and sends a CONNECT (keep-alive 60 s)
// that edit may change first, e.g. to add a will; it fails unless CONNACK is 0.
func (tg *target) hubConnectRaw(t testing.TB, d *hubDevice, edit func(*packets.ConnectPacket)) *rawConn {
	t.Helper()
	c := tg.hubDial(t, d)
	p := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	p.ProtocolName, p.ProtocolVersion, p.ClientIdentifier, p.Keepalive = "MQTT", 4, d.id, 60
	p.UsernameFlag, p.Username = true, hubUser(d.host, d.id)
	edit(p)
	if err := c.write(p); err != nil {
		t.Fatalf("CONNECT %+v: %v", p, err)
	}
	pk, err := c.read()
	if ack, ok := pk.(*packets.ConnackPacket); err != nil || !ok || ack.ReturnCode != 0 {
		t.Fatalf("CONNECT %+v: %v %v; want CONNACK 0", p, pk, err)
	}
	return c
}

// waitOffline waits until the control plane reports d disconnected.
func (tg *target) waitOffline(t testing.TB, d *hubDevice) {
	t.Helper()
	waitFor(t, "device offline", 30*time.Second, func() error {
		if _, dev := tg.device(d.name, d.id); jstr(dev, "connectionState") != "Disconnected" {
			return fmt.Errorf("connectionState %q", jstr(dev, "connectionState"))
		}
		return nil
	})
}

// waitC2DDone waits until d has no C2D message pending (queued or
// delivered but not yet acknowledged).
func (tg *target) waitC2DDone(t testing.TB, what string, d *hubDevice) {
	t.Helper()
	waitFor(t, what, 30*time.Second, func() error {
		if _, dev := tg.device(d.name, d.id); jget(dev, "cloudToDeviceMessageCount") != float64(0) {
			return fmt.Errorf("cloudToDeviceMessageCount %v", jget(dev, "cloudToDeviceMessageCount"))
		}
		return nil
	})
}
