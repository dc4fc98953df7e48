package simulator

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook connects mochi to the DPS and hub logic. Every method recovers from
// panics: a bug must cost one connection, never the simulator.
type hook struct {
	mqtt.HookBase
	s *Sim
}

func (h *hook) ID() string { return "devid-sim" }

func (h *hook) Provides(b byte) bool {
	return slices.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe,
		mqtt.OnSubscribed, mqtt.OnPublish, mqtt.OnPublished, mqtt.OnPacketRead,
		mqtt.OnDisconnect, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnWill,
	}, b)
}

// errClosed is the stop cause for connections the simulator drops.
var errClosed = errors.New("simulator: connection closed by service")

func (h *hook) recover(cl *mqtt.Client, where string) {
	if r := recover(); r != nil {
		h.s.log.Error("recovered panic", "where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		if cl != nil {
			cl.Stop(errClosed)
		}
	}
}

func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) (err error) {
	defer h.recover(cl, "OnConnect")
	s := h.s
	role := roleOf(cl.Net.Listener)
	orig := pk.Connect.ClientIdentifier
	if s.faults.refused(role, orig) {
		return errors.New("simulator: connection refused by fault injection")
	}
	c := &conn{role: role, id: orig, clean: pk.Connect.Clean}
	if role == roleDPS {
		// DPS treats every session as clean; unique IDs keep parallel
		// registrations of one device from taking each other over.
		cl.ID = "dps|" + orig + "|" + newUUID()
		cl.Properties.Clean = true
	} else {
		// One connection per device per hub: equal IDs make mochi close
		// the older connection (error 400027 on the real hub).
		cl.ID = role + "|" + orig
	}
	// Published in conns only once authenticated (its fields are then final).
	s.conns.connect(cl, c)
	return nil
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) (ok bool) {
	defer h.recover(cl, "OnConnectAuthenticate")
	s := h.s
	c := s.conns.claim(cl)
	if c == nil {
		return false
	}
	st, _ := peerState(cl.Net.Conn)
	if len(st.PeerCertificates) == 0 {
		s.log.Info("connect refused: no client certificate", "listener", cl.Net.Listener)
		return false
	}
	c.chain = st.PeerCertificates
	c.leaf = st.PeerCertificates[0]
	var err error
	if c.role == roleDPS {
		err = s.dps.auth(c, pk)
	} else {
		err = s.hub.auth(c, pk)
	}
	if err != nil {
		s.log.Info("connect refused", "endpoint", c.role, "client", c.id, "reason", err)
		return false
	}
	s.conns.admit(cl, c)
	return true
}

// OnSessionEstablish runs after authentication, before mochi takes over
// an existing session with the same ID: close the old connection at the
// TCP level first, as IoT Hub does (mochi would send an MQTT 5 style
// DISCONNECT, which 3.1.1 servers never send).
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	defer h.recover(cl, "OnSessionEstablish")
	if old, ok := h.s.broker.Clients.Get(cl.ID); ok && old != cl {
		old.Stop(errClosed)
	}
	if c := h.s.conns.get(cl); c != nil && c.role != roleDPS {
		h.s.hub.online(cl, c)
	}
}

func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	defer h.recover(cl, "OnSessionEstablished")
	if c := h.s.conns.get(cl); c != nil && c.role != roleDPS {
		h.s.hub.connected(cl, c)
	}
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	defer h.recover(nil, "OnDisconnect")
	if c := h.s.conns.remove(cl); c != nil && c.role != roleDPS {
		h.s.hub.disconnected(cl, c)
	}
}

func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) (ok bool) {
	defer h.recover(cl, "OnACLCheck")
	if write {
		return true // publishes are checked in OnPublish, which can close the connection
	}
	s := h.s
	c := s.conns.get(cl)
	if c == nil {
		return false
	}
	if c.role == roleDPS {
		if topic != "$dps/registrations/res/#" {
			s.log.Info("DPS: closing connection: subscription to undocumented topic", "client", c.id, "filter", topic)
			cl.Stop(errClosed)
			return false
		}
		return true
	}
	if !HubSubscriptionAllowed(topic, c.id) {
		s.log.Info("hub: closing connection: subscription to undocumented topic", "client", c.id, "filter", topic)
		cl.Stop(errClosed)
		return false
	}
	if _, exists := cl.State.Subscriptions.Get(topic); !exists && cl.State.Subscriptions.Len() >= 5 {
		s.log.Info("hub: closing connection: more than 5 subscriptions", "client", c.id)
		cl.Stop(errClosed)
		return false
	}
	return true
}

func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	defer h.recover(cl, "OnSubscribe")
	for i := range pk.Filters {
		if pk.Filters[i].Qos > 1 {
			pk.Filters[i].Qos = 1 // both services grant at most QoS 1
		}
	}
	return pk
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	defer h.recover(cl, "OnSubscribed")
	c := h.s.conns.get(cl)
	if c == nil || c.role == roleDPS {
		return
	}
	for _, f := range pk.Filters {
		if strings.HasSuffix(f.Filter, "/messages/devicebound/#") {
			h.s.hub.deliverC2D(c.role, c.id)
		}
	}
}

func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	defer h.recover(cl, "OnWill")
	// Only a telemetry-topic will is allowed (delivered as telemetry with
	// iothub-MessageType: Will); anything else is dropped.
	// The will is never routed by the broker (no device subscribes to
	// telemetry topics); it is only recorded.
	will.Retain = false
	if c := h.s.conns.get(cl); c != nil && c.role != roleDPS {
		h.s.hub.will(c, will)
	}
	return will, nil
}

func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (out packets.Packet, err error) {
	defer func() {
		if r := recover(); r != nil {
			h.s.log.Error("recovered panic", "where", "OnPublish", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			cl.Stop(errClosed)
			out, err = pk, packets.ErrRejectPacket
		}
	}()
	s := h.s
	c := s.conns.get(cl)
	if c == nil {
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	n := c.msgs.Add(1)
	if k := s.faults.dropAfter(c.role, c.id); k > 0 && n > int64(k) {
		s.log.Info("fault: dropping connection", "endpoint", c.role, "client", c.id, "after", k)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Qos > 1 {
		s.log.Info("closing connection: QoS 2 publish", "endpoint", c.role, "client", c.id, "topic", pk.TopicName)
		cl.Stop(errClosed)
		return pk, packets.ErrRejectPacket
	}
	if c.role == roleDPS {
		if _, err := ParseDPSTopic(pk.TopicName); err != nil {
			s.log.Info("DPS: closing connection", "client", c.id, "reason", err)
			cl.Stop(errClosed)
			return pk, packets.ErrRejectPacket
		}
		return pk, packets.CodeSuccessIgnore // answered in OnPublished, after the PUBACK
	}
	return s.hub.publish(cl, c, pk)
}

func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	defer h.recover(cl, "OnPublished")
	c := h.s.conns.get(cl)
	if c == nil {
		return
	}
	if c.role == roleDPS {
		t, err := ParseDPSTopic(pk.TopicName)
		if err != nil {
			return
		}
		h.s.dps.handle(cl, c, t, bytes.Clone(pk.Payload))
		return
	}
	h.s.hub.published(cl, c, pk)
}

func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	defer h.recover(cl, "OnPacketRead")
	if pk.FixedHeader.Type != packets.Puback {
		return pk, nil
	}
	if c := h.s.conns.get(cl); c != nil && c.role != roleDPS {
		h.s.hub.c2dAcked(c.role, c.id, pk.PacketID)
	}
	return pk, nil
}
