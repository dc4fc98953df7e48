package simulator

import (
	"errors"
	"fmt"
)

// c2dFlight tracks one device's delivered, unacknowledged C2D messages.
type c2dFlight struct {
	byPacket map[uint16]string // packet ID -> message ID
}

// sendC2D queues a cloud-to-device message and delivers it if possible.
// The int is the HTTP status for the control plane.
func (h *hubService) sendC2D(hub, deviceID string, m C2DMessage) (C2DMessage, int, error) {
	if len(m.Payload) > hubMaxC2D {
		return m, 413, errors.New("message exceeds 64 KB")
	}
	key := deviceKey(hub, deviceID)
	if m.MessageID == "" {
		m.MessageID = newUUID()
	}
	if m.Ack == "" {
		m.Ack = "none"
	}
	m.EnqueuedAt = nowUTC()
	h.reg.mu.Lock()
	d := h.reg.devices[key]
	if d == nil {
		h.reg.mu.Unlock()
		return m, 404, fmt.Errorf("device %q not found", deviceID)
	}
	if len(d.C2D) >= hubMaxC2DQueue {
		h.reg.mu.Unlock()
		return m, 403, errors.New("DeviceMaximumQueueDepthExceeded: 50 messages pending")
	}
	d.C2D = append(d.C2D, m)
	d.Device.CloudToDeviceMessageCount = len(d.C2D)
	b := mustJSON(d)
	h.reg.mu.Unlock()
	if err := h.reg.db.putRaw(bktDevices, key, b); err != nil {
		return m, 500, err
	}
	h.deliverC2D(hub, deviceID)
	return m, 200, nil
}

// deliverC2D sends every queued message not already in flight to the
// device, if it is connected and subscribed, at QoS 1.
func (h *hubService) deliverC2D(hub, deviceID string) {
	key := deviceKey(hub, deviceID)
	h.reg.mu.Lock()
	cl := h.liveLocked(key)
	d := h.reg.devices[key]
	if cl == nil || d == nil {
		h.reg.mu.Unlock()
		return
	}
	if _, ok := subscribedQoS(cl, "devices/"+deviceID+"/messages/devicebound/#"); !ok {
		if _, ok2 := subscribedQoS(cl, "devices/+/messages/devicebound/#"); !ok2 {
			h.reg.mu.Unlock()
			return
		}
	}
	fl := h.flightLocked(key)
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
	h.reg.mu.Unlock()
	for _, m := range todo {
		props := []Property{{Name: "$.mid", Value: m.MessageID}, {Name: "$.to", Value: "/devices/" + deviceID + "/messages/deviceBound"}}
		props = append(props, m.Properties...)
		props = append(props, Property{Name: "iothub-ack", Value: m.Ack})
		topic := "devices/" + deviceID + "/messages/devicebound/" + EncodePropertyBag(props)
		// Sent under the lock, so the PUBACK cannot be handled before the
		// packet ID is recorded.
		h.reg.mu.Lock()
		id, err := sendTo(cl, topic, m.Payload, 1)
		if err == nil {
			fl.byPacket[id] = m.MessageID
		}
		h.reg.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// flightLocked returns the device's in-flight table; reg.mu is held.
func (h *hubService) flightLocked(key string) *c2dFlight {
	f := h.reg.c2d[key]
	if f == nil {
		f = &c2dFlight{byPacket: map[uint16]string{}}
		h.reg.c2d[key] = f
	}
	return f
}

// c2dAcked removes the message a device acknowledged from its queue.
func (h *hubService) c2dAcked(hub, deviceID string, packetID uint16) {
	key := deviceKey(hub, deviceID)
	h.reg.mu.Lock()
	fl := h.flightLocked(key)
	mid, ok := fl.byPacket[packetID]
	delete(fl.byPacket, packetID)
	d := h.reg.devices[key]
	if !ok || d == nil {
		h.reg.mu.Unlock()
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
	h.reg.mu.Unlock()
	_ = h.reg.db.putRaw(bktDevices, key, b)
}
