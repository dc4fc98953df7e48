package simulator

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	hubMaxTelemetry = 256 * 1024
	hubMaxC2D       = 64 * 1024
	hubMaxC2DQueue  = 50
	hubMaxTwin      = 32 * 1024
	hubMaxMethod    = 128 * 1024
)

// authHub checks a hub CONNECT (§3.1). Any failure is CONNACK 5.
func (s *Sim) authHub(cl *mqtt.Client, c *conn, pk packets.Packet) error {
	hub := s.hubByName(c.role)
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
	if !strings.EqualFold(u.HubHost, hub.Host) {
		return fmt.Errorf("username hub %q is not %q", u.HubHost, hub.Host)
	}
	if u.ModuleID != "" {
		return errors.New("module identities are not simulated")
	}
	if u.DeviceID != pk.Connect.ClientIdentifier {
		return fmt.Errorf("username device %q differs from client id %q", u.DeviceID, pk.Connect.ClientIdentifier)
	}
	if !s.apiVersionOK(u.APIVersion, HubAPIVersions) {
		return fmt.Errorf("api-version %q is not supported", u.APIVersion)
	}
	if len(pk.Connect.Password) > 0 {
		return errors.New("password (SAS) given; the simulator supports X.509 only")
	}
	c.apiVer = u.APIVersion
	key := hub.Name + "/" + u.DeviceID
	s.mu.Lock()
	d := s.devices[key]
	var dev Device
	var caIssued bool
	if d != nil {
		dev, caIssued = d.Device, d.CAIssued
	}
	s.mu.Unlock()
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
	if s.isRevoked(c.chain) {
		return errors.New("client certificate revoked")
	}
	if err := s.checkDeviceCert(dev, caIssued, c); err != nil {
		return err
	}
	return nil
}

func (s *Sim) checkDeviceCert(dev Device, caIssued bool, c *conn) error {
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
		roots.AddCert(s.PKI.IssuingRoot)
		if !caIssued {
			s.mu.Lock()
			for _, g := range s.groups {
				for _, gc := range g.certs {
					roots.AddCert(gc)
				}
			}
			s.mu.Unlock()
		}
		inter := x509.NewCertPool()
		for _, ic := range c.chain[1:] {
			inter.AddCert(ic)
		}
		if _, err := c.leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			return nil
		}
	}
	return fmt.Errorf("Thumbprint does not match configuration: Thumbprint: SHA1Hash=%s, SHA2Hash=%s", t1, t256)
}

// hubOnline makes the connection the device's live one before CONNACK is
// sent, so a disable/delete from now on finds it; one that landed after
// authentication is caught by the re-check here (both under s.mu).
func (s *Sim) hubOnline(cl *mqtt.Client, c *conn) {
	key := c.role + "/" + c.id
	s.mu.Lock()
	d := s.devices[key]
	if d == nil || d.Device.Status != "enabled" {
		s.mu.Unlock()
		s.dropConn(cl)
		return
	}
	s.online[key] = cl
	s.mu.Unlock()
	if s.isRevoked(c.chain) {
		s.dropConn(cl)
	}
}

// dropConn closes a connection before its CONNACK; mochi then calls no
// disconnect hook, so forget it here.
func (s *Sim) dropConn(cl *mqtt.Client) {
	cl.Stop(errClosed)
	s.cmu.Lock()
	delete(s.conns, cl)
	s.cmu.Unlock()
}

func (s *Sim) hubConnected(cl *mqtt.Client, c *conn) {
	key := c.role + "/" + c.id
	s.mu.Lock()
	if s.online[key] != cl {
		s.mu.Unlock()
		return // closed (or replaced) before CONNACK went out
	}
	d := s.devices[key]
	if d != nil {
		d.Device.ConnectionState = "Connected"
		d.Device.ConnectionStateUpdatedTime = nowUTC()
		d.Device.LastActivityTime = nowUTC()
		// A new connection redelivers every unacknowledged C2D message.
		delete(s.c2d, key)
		if c.clean && len(d.C2D) > 0 {
			d.C2D = nil // a clean session discards queued C2D messages (§3.4)
			d.Device.CloudToDeviceMessageCount = 0
			b := mustJSON(d)
			s.mu.Unlock()
			_ = s.st.putRaw(bktDevices, key, b)
			s.mu.Lock()
		}
	}
	s.mu.Unlock()
	if !c.clean {
		s.deliverC2D(c.role, c.id)
	}
}

// hubPublish validates and (for telemetry) records a device publish
// before mochi sends the PUBACK.
func (s *Sim) hubPublish(cl *mqtt.Client, c *conn, pk packets.Packet) (packets.Packet, error) {
	t, err := ParseHubTopic(pk.TopicName, c.id)
	if err != nil {
		if s.cfg.Switches.HubUnknownTopic == "ignore" {
			return pk, packets.CodeSuccessIgnore
		}
		s.log.Info("hub: closing connection", "device", c.id, "reason", err)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Retain && s.cfg.Switches.HubRetain == "close" {
		s.log.Info("hub: closing connection: retained publish", "device", c.id)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if t.Kind != TopicTelemetry {
		return pk, packets.CodeSuccessIgnore // answered in OnPublished
	}
	if len(pk.Payload)+len(t.PropBag) > hubMaxTelemetry {
		s.log.Info("hub: closing connection: message over 256 KB", "device", c.id, "bytes", len(pk.Payload))
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	props, err := ParsePropertyBag(t.PropBag)
	if err != nil {
		s.log.Info("hub: closing connection: bad property bag", "device", c.id, "reason", err)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if st, _ := s.faults.status(c.role, c.id, "telemetry"); st != 0 {
		s.log.Info("fault: closing connection instead of accepting telemetry", "device", c.id, "status", st)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if d := s.faults.delay(c.role, c.id, "telemetry"); d > 0 {
		time.Sleep(d) // delays this device's PUBACK (and its other traffic)
	}
	if pk.FixedHeader.Retain {
		props = append(props, Property{Name: "mqtt-retain", Value: "true"})
	}
	if err := s.recordTelemetry(c, pk.TopicName, props, pk.Payload, pk.FixedHeader.Qos); err != nil {
		s.log.Error("hub: recording telemetry", "err", err)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	return pk, packets.CodeSuccessIgnore
}

func (s *Sim) recordTelemetry(c *conn, topic string, props []Property, payload []byte, qos byte) error {
	sys, app := SplitProperties(props)
	rec := &TelemetryRecord{
		Hub:                   c.role,
		DeviceID:              c.id,
		ReceivedUtc:           nowUTC(),
		Topic:                 topic,
		QoS:                   qos,
		BodyBase64:            base64.StdEncoding.EncodeToString(payload),
		SystemProperties:      sys,
		ApplicationProperties: app,
	}
	if utf8.Valid(payload) {
		rec.Body = string(payload)
	}
	if err := s.st.appendTelemetry(rec, s.cfg.TelemetryMax); err != nil {
		return err
	}
	s.mu.Lock()
	if d := s.devices[c.role+"/"+c.id]; d != nil {
		d.Device.LastActivityTime = rec.ReceivedUtc
	}
	s.mu.Unlock()
	s.telCond.L.Lock()
	s.telCond.Broadcast()
	s.telCond.L.Unlock()
	return nil
}

// hubPublished answers twin requests and method responses.
func (s *Sim) hubPublished(cl *mqtt.Client, c *conn, pk packets.Packet) {
	t, err := ParseHubTopic(pk.TopicName, c.id)
	if err != nil {
		return
	}
	payload := bytes.Clone(pk.Payload)
	switch t.Kind {
	case TopicTwinGet, TopicTwinPatchReported:
		s.after(c.role, c.id, "twin", func() { s.twinRequest(cl, c, t, payload) })
	case TopicMethodResponse:
		key := c.role + "/" + c.id + "/" + t.RID
		s.mu.Lock()
		ch := s.methods[key]
		delete(s.methods, key)
		s.mu.Unlock()
		if ch != nil {
			ch <- methodResult{status: t.Status, payload: payload}
		}
	case TopicCredentials:
		s.after(c.role, c.id, "twin", func() { s.issueCertificate(cl, c, t, payload) })
	}
}

func (s *Sim) twinReply(cl *mqtt.Client, c *conn, format string, status int, rid string, body any, extra string) {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	topic := fmt.Sprintf(format, status, rid) + extra
	if !hasResponseSubscription(cl, topic) {
		s.log.Info("hub: device not subscribed to the response topic; reply dropped", "device", c.id, "topic", topic)
		return
	}
	if _, err := s.sendTo(cl, topic, b, 0); err != nil {
		s.log.Debug("hub: reply not sent", "device", c.id, "err", err)
	}
}

// hasResponseSubscription reports whether cl subscribed to a filter that
// covers the response topic (like the real hub, replies are only delivered
// to subscribers).
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

const twinResFmt = "$iothub/twin/res/%d/?$rid=%s"

func (s *Sim) twinRequest(cl *mqtt.Client, c *conn, t Topic, payload []byte) {
	if st, _ := s.faults.status(c.role, c.id, "twin"); st != 0 {
		s.twinReply(cl, c, twinResFmt, st, t.RID, errorBody(st*1000+1, "Injected fault."), "")
		return
	}
	key := c.role + "/" + c.id
	if t.Kind == TopicTwinGet {
		s.mu.Lock()
		d := s.devices[key]
		if d == nil {
			s.mu.Unlock()
			s.twinReply(cl, c, twinResFmt, 404, t.RID, errorBody(404001, "Device not found."), "")
			return
		}
		body := map[string]any{"desired": withVersion(d.Twin.Desired, d.Twin.DesiredVersion), "reported": withVersion(d.Twin.Reported, d.Twin.ReportedVersion)}
		s.mu.Unlock()
		s.twinReply(cl, c, twinResFmt, 200, t.RID, body, "")
		return
	}
	// Reported patch.
	if len(payload) > hubMaxTwin {
		s.twinReply(cl, c, twinResFmt, 400, t.RID, errorBody(400004, "Reported properties exceed 32 KB."), "")
		return
	}
	var patch map[string]any
	if err := json.Unmarshal(payload, &patch); err != nil || patch == nil {
		s.twinReply(cl, c, twinResFmt, 400, t.RID, errorBody(400004, "Reported patch is not a JSON object."), "")
		return
	}
	delete(patch, "$version")
	s.mu.Lock()
	d := s.devices[key]
	if d == nil {
		s.mu.Unlock()
		s.twinReply(cl, c, twinResFmt, 404, t.RID, errorBody(404001, "Device not found."), "")
		return
	}
	if d.Twin.Reported == nil {
		d.Twin.Reported = map[string]any{}
	}
	mergePatch(d.Twin.Reported, patch)
	d.Twin.ReportedVersion++
	d.Twin.Version++
	v := d.Twin.ReportedVersion
	b := mustJSON(d)
	s.mu.Unlock()
	_ = s.st.putRaw(bktDevices, key, b)
	s.twinReply(cl, c, twinResFmt, 204, t.RID, nil, fmt.Sprintf("&$version=%d", v))
}

func withVersion(m map[string]any, v int) map[string]any {
	out := cloneMap(m)
	out["$version"] = v
	return out
}

// mergePatch applies a JSON merge patch: null deletes, objects merge.
func mergePatch(dst, patch map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			continue
		}
		if pm, ok := v.(map[string]any); ok {
			dm, ok := dst[k].(map[string]any)
			if !ok {
				dm = map[string]any{}
			}
			mergePatch(dm, pm)
			dst[k] = dm
			continue
		}
		dst[k] = v
	}
}

// UpdateDesired merges patch into the desired properties and pushes it to
// the device if it is connected and subscribed.
func (s *Sim) UpdateDesired(hub, deviceID string, patch map[string]any, tags map[string]any, replace bool) (TwinState, error) {
	key := hub + "/" + deviceID
	s.mu.Lock()
	d := s.devices[key]
	if d == nil {
		s.mu.Unlock()
		return TwinState{}, errNotFoundErr
	}
	if tags != nil {
		if replace {
			d.Twin.Tags = cloneMap(tags)
		} else {
			mergePatch(d.Twin.Tags, cloneMap(tags))
		}
	}
	var push []byte
	if patch != nil {
		p := cloneMap(patch)
		delete(p, "$version")
		delete(p, "$metadata")
		if replace {
			d.Twin.Desired = p
		} else {
			mergePatch(d.Twin.Desired, p)
		}
		d.Twin.DesiredVersion++
		body := cloneMap(p)
		body["$version"] = d.Twin.DesiredVersion
		push, _ = json.Marshal(body)
	}
	d.Twin.Version++
	var tw TwinState
	b := mustJSON(d)
	_ = json.Unmarshal(mustJSON(d.Twin), &tw)
	cl := s.liveLocked(key)
	s.mu.Unlock()
	if err := s.st.putRaw(bktDevices, key, b); err != nil {
		return tw, err
	}
	if push != nil && cl != nil {
		if _, ok := subscribedQoS(cl, "$iothub/twin/PATCH/properties/desired/#"); ok {
			_, _ = s.sendTo(cl, fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", tw.DesiredVersion), push, 0)
		}
	}
	return tw, nil
}

var errNotFoundErr = errors.New("not found")

// InvokeMethod calls a direct method and waits for the device's answer.
func (s *Sim) InvokeMethod(hub, deviceID, name string, payload json.RawMessage, timeout, connectTimeout time.Duration) (int, json.RawMessage, error) {
	key := hub + "/" + deviceID
	deadline := time.Now().Add(connectTimeout)
	var cl *mqtt.Client
	for {
		s.mu.Lock()
		cl = s.liveLocked(key)
		exists := s.devices[key] != nil
		s.mu.Unlock()
		if !exists {
			return 404, nil, fmt.Errorf("device %q not found", deviceID)
		}
		if cl != nil {
			if _, ok := subscribedQoS(cl, "$iothub/methods/POST/#"); ok {
				break
			}
		}
		if time.Now().After(deadline) {
			return 404, nil, fmt.Errorf("device %q is not online or not subscribed to methods", deviceID)
		}
		time.Sleep(50 * time.Millisecond) // bounded by connectTimeout
	}
	rid := newUUID()
	ch := make(chan methodResult, 1)
	mkey := key + "/" + rid
	s.mu.Lock()
	s.methods[mkey] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.methods, mkey)
		s.mu.Unlock()
	}()
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	if _, err := s.sendTo(cl, fmt.Sprintf("$iothub/methods/POST/%s/?$rid=%s", name, rid), payload, 0); err != nil {
		return 404, nil, fmt.Errorf("device %q went offline", deviceID)
	}
	select {
	case r := <-ch:
		return r.status, r.payload, nil
	case <-time.After(timeout):
		return 504, nil, errors.New("timed out waiting for the device's response")
	}
}

// SendC2D queues a cloud-to-device message and delivers it if possible.
func (s *Sim) SendC2D(hub, deviceID string, m C2DMessage) (C2DMessage, int, error) {
	if len(m.Payload) > hubMaxC2D {
		return m, 413, errors.New("message exceeds 64 KB")
	}
	key := hub + "/" + deviceID
	if m.MessageID == "" {
		m.MessageID = newUUID()
	}
	if m.Ack == "" {
		m.Ack = "none"
	}
	m.EnqueuedAt = nowUTC()
	s.mu.Lock()
	d := s.devices[key]
	if d == nil {
		s.mu.Unlock()
		return m, 404, fmt.Errorf("device %q not found", deviceID)
	}
	if len(d.C2D) >= hubMaxC2DQueue {
		s.mu.Unlock()
		return m, 403, errors.New("DeviceMaximumQueueDepthExceeded: 50 messages pending")
	}
	d.C2D = append(d.C2D, m)
	d.Device.CloudToDeviceMessageCount = len(d.C2D)
	b := mustJSON(d)
	s.mu.Unlock()
	if err := s.st.putRaw(bktDevices, key, b); err != nil {
		return m, 500, err
	}
	s.deliverC2D(hub, deviceID)
	return m, 200, nil
}

// c2dInflight tracks delivered, unacknowledged C2D messages per device.
type c2dFlight struct {
	byPacket map[uint16]string
}

func (s *Sim) deliverC2D(hub, deviceID string) {
	key := hub + "/" + deviceID
	s.mu.Lock()
	cl := s.liveLocked(key)
	d := s.devices[key]
	if cl == nil || d == nil {
		s.mu.Unlock()
		return
	}
	if _, ok := subscribedQoS(cl, "devices/"+deviceID+"/messages/devicebound/#"); !ok {
		if _, ok2 := subscribedQoS(cl, "devices/+/messages/devicebound/#"); !ok2 {
			s.mu.Unlock()
			return
		}
	}
	fl := s.c2dFlights(key)
	inflight := map[string]bool{}
	for _, id := range fl.byPacket {
		inflight[id] = true
	}
	var todo []C2DMessage
	for i := range d.C2D {
		if !inflight[d.C2D[i].MessageID] {
			d.C2D[i].Delivered++
			todo = append(todo, d.C2D[i])
		}
	}
	s.mu.Unlock()
	for _, m := range todo {
		props := []Property{{Name: "$.mid", Value: m.MessageID}, {Name: "$.to", Value: "/devices/" + deviceID + "/messages/deviceBound"}}
		props = append(props, m.Properties...)
		props = append(props, Property{Name: "iothub-ack", Value: m.Ack})
		topic := "devices/" + deviceID + "/messages/devicebound/" + EncodePropertyBag(props)
		s.mu.Lock()
		id, err := s.sendTo(cl, topic, m.Payload, 1)
		if err == nil {
			fl.byPacket[id] = m.MessageID
		}
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (s *Sim) c2dFlights(key string) *c2dFlight {
	if s.c2d == nil {
		s.c2d = map[string]*c2dFlight{}
	}
	f := s.c2d[key]
	if f == nil {
		f = &c2dFlight{byPacket: map[uint16]string{}}
		s.c2d[key] = f
	}
	return f
}

func (s *Sim) c2dAcked(hub, deviceID string, packetID uint16) {
	key := hub + "/" + deviceID
	s.mu.Lock()
	fl := s.c2dFlights(key)
	mid, ok := fl.byPacket[packetID]
	delete(fl.byPacket, packetID)
	d := s.devices[key]
	if !ok || d == nil {
		s.mu.Unlock()
		return
	}
	for i := range d.C2D {
		if d.C2D[i].MessageID == mid {
			d.C2D = append(d.C2D[:i], d.C2D[i+1:]...)
			break
		}
	}
	d.Device.CloudToDeviceMessageCount = len(d.C2D)
	b := mustJSON(d)
	s.mu.Unlock()
	_ = s.st.putRaw(bktDevices, key, b)
}

// issueCertificate serves the hub certificate-renewal preview (§3.8):
// 202 {correlationId, operationExpires}, then 200 with the chain, as a
// bare array of base64 DER (SDK) or {"certificates":[PEM...]} (docs),
// per --hub-credentials-response.
func (s *Sim) issueCertificate(cl *mqtt.Client, c *conn, t Topic, payload []byte) {
	family := "credentials"
	if t.ModuleID == "credential" {
		family = "credential"
	}
	if sw := s.cfg.Switches.HubCredentialsTopic; sw != "both" && sw != family {
		s.log.Info("hub: closing connection: credentials topic spelling not enabled", "device", c.id, "topic", family)
		cl.Stop(errClosed)
		return
	}
	resFmt := "$iothub/" + family + "/res/%d/?$rid=%s"
	fail := func(status, code int, msg, credErr string) {
		eb := errorBody(code, msg)
		if credErr != "" {
			eb.Info = map[string]string{"credentialError": credErr}
		}
		s.twinReply(cl, c, resFmt, status, t.RID, eb, "")
	}
	if c.apiVer != "2025-08-01-preview" {
		fail(400, 400004, "Certificate issuance needs api-version 2025-08-01-preview.", "")
		return
	}
	if !validCredRID(t.RID) {
		fail(400, 400004, "$rid must be 4-36 characters of letters, digits and '-', not starting or ending with '-'.", "")
		return
	}
	if st, ra := s.faults.status(c.role, c.id, "twin"); st != 0 {
		eb := errorBody(st*1000+2, "Injected fault.")
		eb.RetryAfter = ra
		s.twinReply(cl, c, resFmt, st, t.RID, eb, "")
		return
	}
	var req struct {
		ID      string `json:"id"`
		CSR     string `json:"csr"`
		Replace string `json:"replace"`
	}
	if err := json.Unmarshal(payload, &req); err != nil {
		fail(400, 400040, "Request body is not valid JSON.", "")
		return
	}
	if req.ID != c.id {
		fail(400, 400040, fmt.Sprintf("id %q is not the connected device %q.", req.ID, c.id), "")
		return
	}
	chainB64, err := s.issueFromCSR(req.CSR, c.id, &Enrollment{})
	if err != nil {
		fail(400, 400040, "Invalid csr: "+err.Error(), "FailedToDecodeCsr")
		return
	}
	exp := time.Now().Add(3 * time.Minute).UTC().Format("2006-01-02T15:04:05.000Z")
	s.twinReply(cl, c, resFmt, 202, t.RID, map[string]string{"correlationId": newUUID(), "operationExpires": exp}, "")
	// Bind the device to the new certificate (the issuing CA is trusted
	// for this device from now on, like ADR credential sync).
	key := c.role + "/" + c.id
	der, _ := base64.StdEncoding.DecodeString(chainB64[0])
	leaf, _ := x509.ParseCertificate(der)
	s.mu.Lock()
	d := s.devices[key]
	var b []byte
	if d != nil && leaf != nil {
		_, t256 := Thumbprints(leaf)
		d.CAIssued = true
		old := ""
		if d.Device.Authentication.X509Thumbprint != nil {
			old = d.Device.Authentication.X509Thumbprint.PrimaryThumbprint
		}
		d.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: t256, SecondaryThumbprint: old}}
		d.Device.Etag = newEtag()
		b = mustJSON(d)
	}
	s.mu.Unlock()
	if b != nil {
		if err := s.st.putRaw(bktDevices, key, b); err != nil {
			fail(500, 500001, "Storage failure.", "")
			return
		}
	}
	var body any = chainB64
	if s.cfg.Switches.HubCredentialsResponse == "object" {
		var pems []string
		for _, c64 := range chainB64 {
			der, _ := base64.StdEncoding.DecodeString(c64)
			if c, err := x509.ParseCertificate(der); err == nil {
				pems = append(pems, string(pemCert(c)))
			}
		}
		body = map[string]any{"certificates": pems}
	}
	s.twinReply(cl, c, resFmt, 200, t.RID, body, "")
}

func validCredRID(r string) bool {
	if len(r) < 4 || len(r) > 36 || r[0] == '-' || r[len(r)-1] == '-' {
		return false
	}
	for _, ch := range r {
		if !(ch == '-' || ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z') {
			return false
		}
	}
	return true
}

// liveLocked returns the device's live connection; s.mu is held. A
// connection that died before mochi reported it (e.g. the CONNACK write
// failed, after which mochi calls no disconnect hook) is dropped here.
func (s *Sim) liveLocked(key string) *mqtt.Client {
	cl := s.online[key]
	if cl != nil && cl.Closed() {
		delete(s.online, key)
		if d := s.devices[key]; d != nil {
			d.Device.ConnectionState = "Disconnected"
		}
		s.cmu.Lock()
		delete(s.conns, cl)
		s.cmu.Unlock()
		return nil
	}
	return cl
}
