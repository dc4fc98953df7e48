package dps

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Inbound messages on the hub connection: responses, desired patches,
// direct methods and C2D.

// MethodRequest is a direct-method invocation.
type MethodRequest struct {
	Name    string
	RID     string
	Payload []byte
}

// MethodHandler answers a direct method with a status (any integer) and
// an optional JSON payload. ctx ends when the hub client closes.
type MethodHandler func(ctx context.Context, req MethodRequest) (status int, payload []byte)

// HandleMethod registers (or with nil, removes) a direct-method handler.
func (h *Hub) HandleMethod(name string, fn MethodHandler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if fn == nil {
		delete(h.methods, name)
		return
	}
	h.methods[name] = fn
}

// deliver hands a response to the request waiting on its $rid without
// blocking the dispatcher. It reports false when no request waits.
func (h *Hub) deliver(resp Response, payload []byte) bool {
	h.mu.Lock()
	ch := h.waiters[resp.RID]
	h.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case ch <- twinReply{resp, append([]byte(nil), payload...)}:
	default:
	}
	return true
}

// dispatch routes one inbound PUBLISH. It runs on its own goroutine.
func (h *Hub) dispatch(topic string, payload []byte) {
	switch {
	case strings.HasPrefix(topic, twinResPrefix):
		resp, err := ParseTwinResponseTopic(topic)
		if err != nil {
			h.log.Warn("bad twin response", "err", err)
			return
		}
		if !h.deliver(resp, payload) {
			h.log.Debug("twin response for no request", "topic", topic)
		}
	case strings.HasPrefix(topic, credentialsResPrefix):
		resp, err := parseResponseTopic(topic, credentialsResPrefix)
		if err != nil {
			h.log.Warn("bad credentials response", "err", err)
			return
		}
		if !h.deliver(resp, payload) {
			h.log.Info("credentials response for no request", "topic", topic)
		}
	case strings.HasPrefix(topic, twinDesiredPrefix):
		v, ok, err := parseDesiredTopic(topic)
		if err != nil {
			h.log.Warn("bad desired patch topic", "err", err)
		}
		if !ok {
			// The version is also in the body.
			var b struct {
				Version *int64 `json:"$version"`
			}
			if json.Unmarshal(payload, &b) == nil && b.Version != nil {
				v = *b.Version
			}
		}
		h.desiredVersion.Store(v)
		h.stats.desired.Add(1)
		if h.cfg.OnDesired != nil {
			h.cfg.OnDesired(DesiredUpdate{Version: v, Patch: append(json.RawMessage(nil), payload...)})
		}
	case strings.HasPrefix(topic, methodsPrefix):
		h.handleMethod(topic, payload)
	case strings.HasPrefix(topic, "devices/"):
		m, err := ParseC2DTopic(h.cfg.DeviceID, topic)
		if err != nil {
			h.log.Warn("bad c2d topic", "err", err)
			return
		}
		m.Payload = append([]byte(nil), payload...)
		h.stats.c2d.Add(1)
		if h.cfg.OnC2D != nil {
			h.cfg.OnC2D(m)
		}
	default:
		h.log.Warn("message on unexpected topic", "topic", topic)
	}
}

func (h *Hub) handleMethod(topic string, payload []byte) {
	mt, err := parseMethodTopic(topic)
	if err != nil {
		h.log.Warn("bad method topic", "err", err)
		return
	}
	h.stats.methods.Add(1)
	h.mu.Lock()
	fn := h.methods[mt.Name]
	h.mu.Unlock()
	status, body := 501, []byte(`{"message":"method not implemented on this device"}`)
	if fn != nil {
		status, body = h.callMethod(fn, MethodRequest{Name: mt.Name, RID: mt.RID, Payload: append([]byte(nil), payload...)})
	}
	if body == nil {
		body = []byte{}
	}
	s, err := h.session()
	if err != nil {
		h.log.Warn("method response dropped: not connected", "method", mt.Name, "rid", mt.RID, "err", err)
		return
	}
	s.publishAsync(fmt.Sprintf(methodResFmt, status, mt.RID), 0, body)
}

// callMethod runs a handler; a panic answers 500 instead of taking the
// whole agent down with it.
func (h *Hub) callMethod(fn MethodHandler, req MethodRequest) (status int, body []byte) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("direct method handler panicked", "method", req.Name, "panic", fmt.Sprint(p))
			status, body = 500, []byte(`{"message":"method handler failed on the device"}`)
		}
	}()
	return fn(h.ctx, req)
}
