package simulator

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"devid/simulator/simapi"
)

// Service limits of IoT Hub's device endpoint (docs/simulator.md).
const (
	hubMaxTelemetry = 256 * 1024
	hubMaxC2D       = 64 * 1024
	hubMaxC2DQueue  = 50
	hubMaxTwin      = 32 * 1024
	hubMaxMethod    = 128 * 1024
)

// hubService is the IoT Hub device endpoint of every simulated hub:
// CONNECT authentication, telemetry, twins, direct methods, C2D and the
// certificate-renewal preview. Device records live in the registry.
type hubService struct {
	sw     Switches
	log    *slog.Logger
	reg    *registry
	conns  *connTable
	faults *faultSet
	pki    *PKI
	issuer *issuer
	tel    *telemetryLog

	mmu     sync.Mutex
	methods map[string]chan methodResult // by deviceKey + "/" + $rid of a direct-method call

	cmu     sync.Mutex
	credOps map[string]*credOp // active certificate requests by deviceKey
}

type methodResult struct {
	status  int
	payload []byte
}

// auth checks a hub CONNECT. Any failure is CONNACK 5.
func (h *hubService) auth(c *conn, pk packets.Packet) error {
	hub := h.reg.hubByName(c.role)
	if hub == nil {
		return errors.New("unknown hub listener")
	}
	if pk.ProtocolVersion != 4 {
		return fmt.Errorf("MQTT protocol level %d; IoT Hub speaks 3.1.1 (level 4)", pk.ProtocolVersion)
	}
	u, err := ParseHubUsername(string(pk.Connect.Username))
	if err != nil {
		return err
	}
	if err := h.checkUsername(hub, u, pk); err != nil {
		return err
	}
	c.apiVer = u.APIVersion
	h.reg.mu.Lock()
	d := h.reg.devices[deviceKey(hub.Name, u.DeviceID)]
	var dev Device
	var caIssued bool
	if d != nil {
		dev, caIssued = d.Device, d.CAIssued
	}
	h.reg.mu.Unlock()
	if d == nil {
		return fmt.Errorf("device %q does not exist on %s", u.DeviceID, hub.Name)
	}
	if dev.Status != "enabled" {
		return fmt.Errorf("device %q is disabled", u.DeviceID)
	}
	now := time.Now()
	if now.Before(c.leaf.NotBefore) || now.After(c.leaf.NotAfter) {
		return errors.New("client certificate outside its validity period")
	}
	if h.reg.isRevoked(c.chain) {
		return errors.New("client certificate revoked")
	}
	return h.checkDeviceCert(dev, caIssued, c)
}

// checkUsername checks the CONNECT username against hub and the packet.
func (h *hubService) checkUsername(hub *HubConfig, u HubUsername, pk packets.Packet) error {
	if !strings.EqualFold(u.HubHost, hub.Host) {
		return fmt.Errorf("username hub %q is not %q", u.HubHost, hub.Host)
	}
	if u.ModuleID != "" {
		return errors.New("module identities are not simulated")
	}
	if u.DeviceID != pk.Connect.ClientIdentifier {
		return fmt.Errorf("username device %q differs from client id %q", u.DeviceID, pk.Connect.ClientIdentifier)
	}
	if !apiVersionOK(h.sw, u.APIVersion, HubAPIVersions) {
		return fmt.Errorf("api-version %q is not supported", u.APIVersion)
	}
	if len(pk.Connect.Password) > 0 {
		return errors.New("password (SAS) given; the simulator supports X.509 only")
	}
	return nil
}

// checkDeviceCert accepts the leaf a device presents when it matches the
// device's registered thumbprints, or, for certificateAuthority devices
// and devices whose certificate the simulator issued, when it chains to a
// trusted CA with CN = device ID.
func (h *hubService) checkDeviceCert(dev Device, caIssued bool, c *conn) error {
	t1, t256 := Thumbprints(c.leaf)
	if tp := dev.Authentication.X509Thumbprint; tp != nil {
		for _, want := range []string{tp.PrimaryThumbprint, tp.SecondaryThumbprint} {
			w := strings.ToUpper(strings.ReplaceAll(want, ":", ""))
			if w != "" && (w == t1 || w == t256) {
				return nil
			}
		}
	}
	if dev.Authentication.Type == "certificateAuthority" || caIssued {
		if c.leaf.Subject.CommonName != dev.DeviceID {
			return fmt.Errorf("certificate CN %q is not the device id %q", c.leaf.Subject.CommonName, dev.DeviceID)
		}
		roots := x509.NewCertPool()
		roots.AddCert(h.pki.IssuingRoot)
		if !caIssued {
			for _, gc := range h.reg.groupCAs() {
				roots.AddCert(gc)
			}
		}
		if verifies(c.leaf, roots, c.chain[1:]) {
			return nil
		}
	}
	return fmt.Errorf("Thumbprint does not match configuration: Thumbprint: SHA1Hash=%s, SHA2Hash=%s", t1, t256)
}

// online makes the connection the device's live one before CONNACK is
// sent, so a disable or delete from now on finds it; one that landed after
// authentication is caught by the re-check here (both under reg.mu).
func (h *hubService) online(cl *mqtt.Client, c *conn) {
	key := deviceKey(c.role, c.id)
	h.reg.mu.Lock()
	d := h.reg.devices[key]
	if d == nil || d.Device.Status != "enabled" {
		h.reg.mu.Unlock()
		h.drop(cl)
		return
	}
	h.reg.online[key] = cl
	h.reg.mu.Unlock()
	if h.reg.isRevoked(c.chain) {
		h.drop(cl)
	}
}

// drop closes a connection before its CONNACK; mochi then calls no
// disconnect hook, so forget it here.
func (h *hubService) drop(cl *mqtt.Client) {
	cl.Stop(errClosed)
	h.conns.remove(cl)
}

// connected runs once the CONNACK is out: the device is connected, and a
// persistent session gets its queued C2D messages again.
func (h *hubService) connected(cl *mqtt.Client, c *conn) {
	key := deviceKey(c.role, c.id)
	h.reg.mu.Lock()
	if h.reg.online[key] != cl {
		h.reg.mu.Unlock()
		return // closed (or replaced) before CONNACK went out
	}
	var save []byte
	if d := h.reg.devices[key]; d != nil {
		d.Device.ConnectionState = "Connected"
		d.Device.ConnectionStateUpdatedTime = nowUTC()
		d.Device.LastActivityTime = nowUTC()
		// A new connection redelivers every unacknowledged C2D message.
		delete(h.reg.c2d, key)
		if c.clean && len(d.C2D) > 0 {
			d.C2D = nil // a clean session discards queued C2D messages
			d.Device.CloudToDeviceMessageCount = 0
			save = mustJSON(d)
		}
	}
	h.reg.mu.Unlock()
	if save != nil {
		_ = h.reg.db.putRaw(bktDevices, key, save)
	}
	if !c.clean {
		h.deliverC2D(c.role, c.id)
	}
}

// disconnected marks the device disconnected if cl was its live connection.
func (h *hubService) disconnected(cl *mqtt.Client, c *conn) {
	key := deviceKey(c.role, c.id)
	h.reg.mu.Lock()
	defer h.reg.mu.Unlock()
	if h.reg.online[key] != cl {
		return
	}
	delete(h.reg.online, key)
	if d := h.reg.devices[key]; d != nil {
		d.Device.ConnectionState = "Disconnected"
		d.Device.ConnectionStateUpdatedTime = nowUTC()
	}
}

// liveLocked returns the device's live connection; reg.mu is held. A
// connection that died before mochi reported it (e.g. the CONNACK write
// failed, after which mochi calls no disconnect hook) is dropped here.
func (h *hubService) liveLocked(key string) *mqtt.Client {
	cl := h.reg.online[key]
	if cl != nil && cl.Closed() {
		delete(h.reg.online, key)
		if d := h.reg.devices[key]; d != nil {
			d.Device.ConnectionState = "Disconnected"
		}
		h.conns.remove(cl)
		return nil
	}
	return cl
}

// closeConn logs why the hub closes a device's connection, closes it and
// returns the error that makes mochi drop the publish.
func (h *hubService) closeConn(cl *mqtt.Client, c *conn, why string, args ...any) error {
	msg := "hub: closing connection"
	if why != "" {
		msg += ": " + why
	}
	h.log.Info(msg, append([]any{"device", c.id}, args...)...)
	cl.Stop(errClosed)
	return packets.ErrRejectPacket
}

// publish validates and (for telemetry) records a device publish. A
// telemetry PUBACK is sent by answerTelemetry once the message is
// durable, not by mochi. Twin, method and credential requests are
// answered in published, after mochi's PUBACK.
func (h *hubService) publish(cl *mqtt.Client, c *conn, pk packets.Packet) (packets.Packet, error) {
	t, err := ParseHubTopic(pk.TopicName, c.id)
	if err != nil {
		if h.sw.HubUnknownTopic == "ignore" {
			return pk, packets.CodeSuccessIgnore
		}
		return pk, h.closeConn(cl, c, "", "reason", err)
	}
	if pk.FixedHeader.Retain && h.sw.HubRetain == "close" {
		return pk, h.closeConn(cl, c, "retained publish")
	}
	if t.Kind != TopicTelemetry {
		return pk, packets.CodeSuccessIgnore
	}
	if err := h.telemetry(cl, c, t, pk); err != nil {
		return pk, err
	}
	// Recorded and acknowledged by answerTelemetry; mochi sends nothing.
	return pk, packets.ErrRejectPacket
}

// telemetry checks one device-to-cloud message and queues it for the
// store (group commit), or closes the connection.
func (h *hubService) telemetry(cl *mqtt.Client, c *conn, t Topic, pk packets.Packet) error {
	if len(pk.Payload)+len(t.PropBag) > hubMaxTelemetry {
		return h.closeConn(cl, c, "message over 256 KB", "bytes", len(pk.Payload))
	}
	props, err := ParsePropertyBag(t.PropBag)
	if err != nil {
		return h.closeConn(cl, c, "bad property bag", "reason", err)
	}
	if st, _ := h.faults.status(c.role, c.id, "telemetry"); st != 0 {
		h.log.Info("fault: closing connection instead of accepting telemetry", "device", c.id, "status", st)
		cl.Stop(errClosed)
		return packets.ErrRejectPacket
	}
	if d := h.faults.delay(c.role, c.id, "telemetry"); d > 0 {
		time.Sleep(d) // delays this device's PUBACK (and its other traffic)
	}
	if pk.FixedHeader.Retain {
		props = append(props, Property{Name: "mqtt-retain", Value: "true"})
	}
	rec := h.newRecord(c, pk.TopicName, props, pk.Payload, pk.FixedHeader.Qos)
	a := telAck{rec: rec, id: pk.PacketID, qos: pk.FixedHeader.Qos}
	h.tel.appendAsync(rec, func(err error) {
		a.err = err
		h.queueAnswer(cl, c, a)
	})
	return nil
}

// telAck is a stored (or failed) telemetry message waiting for its answer.
type telAck struct {
	rec *simapi.TelemetryRecord
	id  uint16
	qos byte
	err error
}

// queueAnswer hands a store result to the connection's answerer, which
// sends the PUBACKs in the order the messages arrived (MQTT 3.1.1 4.6).
// It never blocks: it runs on the store's committer, and one device that
// does not read its socket must not hold up the others.
func (h *hubService) queueAnswer(cl *mqtt.Client, c *conn, a telAck) {
	c.amu.Lock()
	c.answers = append(c.answers, a)
	start := !c.answering
	c.answering = true
	c.amu.Unlock()
	if start {
		go h.answerTelemetry(cl, c)
	}
}

// answerTelemetry sends the PUBACKs of c's durable messages and closes
// the connection at the first that could not be stored; it returns when
// none is left.
func (h *hubService) answerTelemetry(cl *mqtt.Client, c *conn) {
	for {
		c.amu.Lock()
		batch := c.answers
		c.answers = nil
		if len(batch) == 0 {
			c.answering = false
			c.amu.Unlock()
			return
		}
		c.amu.Unlock()
		var failed error
		for i, a := range batch {
			if a.err != nil {
				batch, failed = batch[:i], a.err
				break
			}
		}
		if len(batch) > 0 {
			h.touched(c, batch[len(batch)-1].rec.ReceivedUtc)
			h.tel.wake()
		}
		for _, a := range batch {
			if a.qos > 0 {
				// Fails once the connection is closed: nothing after a
				// message that could not be stored is acknowledged.
				_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: a.id})
			}
		}
		if failed != nil && !cl.Closed() {
			h.log.Error("hub: recording telemetry", "device", c.id, "err", failed)
			cl.Stop(errClosed)
		}
	}
}

// will records a device's will as telemetry with iothub-MessageType: Will.
// Only a will on the telemetry topic is recorded; any other is dropped.
func (h *hubService) will(c *conn, will mqtt.Will) {
	t, err := ParseHubTopic(will.TopicName, c.id)
	if err != nil || t.Kind != TopicTelemetry {
		return
	}
	props, err := ParsePropertyBag(t.PropBag)
	if err != nil {
		return
	}
	props = append(props, Property{Name: "iothub-MessageType", Value: "Will"})
	if err := h.record(c, will.TopicName, props, will.Payload, will.Qos); err != nil {
		h.log.Error("hub: recording will", "err", err)
	}
}

// record stores a telemetry message (the will), updates the device's
// last activity and wakes the control plane's telemetry readers.
func (h *hubService) record(c *conn, topic string, props []Property, payload []byte, qos byte) error {
	rec := h.newRecord(c, topic, props, payload, qos)
	if err := h.tel.append(rec); err != nil {
		return err
	}
	h.touched(c, rec.ReceivedUtc)
	h.tel.wake()
	return nil
}

// newRecord is the telemetry record of one message.
func (h *hubService) newRecord(c *conn, topic string, props []Property, payload []byte, qos byte) *simapi.TelemetryRecord {
	sys, app := SplitProperties(props)
	rec := &simapi.TelemetryRecord{
		Hub:                   c.role,
		DeviceID:              c.id,
		ReceivedUtc:           nowUTC(),
		Topic:                 topic,
		QoS:                   qos,
		BodyBase64:            base64.StdEncoding.EncodeToString(payload),
		SystemProperties:      sys,
		ApplicationProperties: app,
		MessageID:             sys["messageId"],
	}
	if utf8.Valid(payload) {
		rec.Body = string(payload)
	}
	return rec
}

// touched sets the device's last activity time.
func (h *hubService) touched(c *conn, at string) {
	h.reg.mu.Lock()
	if d := h.reg.devices[deviceKey(c.role, c.id)]; d != nil {
		d.Device.LastActivityTime = at
	}
	h.reg.mu.Unlock()
}

// published answers twin requests, method responses and certificate
// requests once mochi has acknowledged the publish.
func (h *hubService) published(cl *mqtt.Client, c *conn, pk packets.Packet) {
	t, err := ParseHubTopic(pk.TopicName, c.id)
	if err != nil {
		return
	}
	payload := bytes.Clone(pk.Payload)
	switch t.Kind {
	case TopicTwinGet, TopicTwinPatchReported:
		h.faults.after(h.log, c.role, c.id, "twin", func() { h.twinRequest(cl, c, t, payload) })
	case TopicMethodResponse:
		h.methodResponse(c, t, payload)
	case TopicCredentials:
		h.faults.after(h.log, c.role, c.id, "twin", func() { h.issueCertificate(cl, c, t, payload) })
	}
}

// reply publishes a response on topic format (status, $rid) + extra at
// QoS 0, only to a device subscribed to it, like the real hub.
func (h *hubService) reply(cl *mqtt.Client, c *conn, format string, status int, rid string, body any, extra string) {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	topic := fmt.Sprintf(format, status, rid) + extra
	if !hasResponseSubscription(cl, topic) {
		h.log.Info("hub: device not subscribed to the response topic; reply dropped", "device", c.id, "topic", topic)
		return
	}
	if _, err := sendTo(cl, topic, b, 0); err != nil {
		h.log.Debug("hub: reply not sent", "device", c.id, "err", err)
	}
}

// hasResponseSubscription reports whether cl subscribed to a filter that
// covers the response topic.
func hasResponseSubscription(cl *mqtt.Client, topic string) bool {
	var filters []string
	switch {
	case strings.HasPrefix(topic, "$iothub/twin/res/"):
		filters = []string{"$iothub/twin/res/#"}
	case strings.HasPrefix(topic, "$iothub/credentials/res/"):
		filters = []string{"$iothub/credentials/res/#"}
	case strings.HasPrefix(topic, "$iothub/credential/res/"):
		filters = []string{"$iothub/credential/#", "$iothub/credential/res/#"}
	}
	for _, f := range filters {
		if _, ok := subscribedQoS(cl, f); ok {
			return true
		}
	}
	return false
}
