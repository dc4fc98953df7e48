package simulator

import (
	"encoding/base64"
	"net/http"
	"sort"

	"devid/simulator/simapi"
)

// c2dAPI queues cloud-to-device messages: POST /sim/c2d and the hub
// service API's POST /devices/{id}/messages/deviceBound.
type c2dAPI struct {
	reg *registry
	hub *hubService
}

func (a *c2dAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sim/c2d", a.post)
	hubRoutes(mux, "POST", "/devices/{id}/messages/deviceBound", a.postPath)
}

func (a *c2dAPI) post(w http.ResponseWriter, r *http.Request) {
	var in simapi.C2DRequest
	if !readJSON(w, r, &in) {
		return
	}
	a.send(w, in)
}

// postPath takes hub and device from the path.
func (a *c2dAPI) postPath(w http.ResponseWriter, r *http.Request) {
	var in simapi.C2DRequest
	if !readJSON(w, r, &in) {
		return
	}
	h := hubFor(a.reg, w, r)
	if h == nil {
		return
	}
	in.Hub, in.DeviceID = h.Name, r.PathValue("id")
	a.send(w, in)
}

// c2dMessage builds the queued message of a request.
func c2dMessage(in simapi.C2DRequest) (C2DMessage, *requestError) {
	switch in.Ack {
	case "", "none", "positive", "negative", "full":
	default:
		return C2DMessage{}, invalid("ack must be none, positive, negative or full")
	}
	payload := []byte(in.Payload)
	if in.PayloadBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(in.PayloadBase64)
		if err != nil {
			return C2DMessage{}, invalid("payloadBase64: %v", err)
		}
		payload = b
	}
	m := C2DMessage{MessageID: in.MessageID, Payload: payload, Ack: in.Ack}
	for _, p := range []Property{{Name: "$.cid", Value: in.CorrelationID}, {Name: "$.ct", Value: in.ContentType}, {Name: "$.ce", Value: in.ContentEnc}} {
		if p.Value != "" {
			m.Properties = append(m.Properties, p)
		}
	}
	keys := make([]string, 0, len(in.Properties))
	for k := range in.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.Properties = append(m.Properties, Property{Name: k, Value: in.Properties[k]})
	}
	return m, nil
}

func (a *c2dAPI) send(w http.ResponseWriter, in simapi.C2DRequest) {
	h := a.reg.namedHub(in.Hub)
	if h == nil {
		writeErr(w, 404, 404000, "unknown hub %q", in.Hub)
		return
	}
	if in.DeviceID == "" {
		writeErr(w, 400, 400004, "deviceId is required")
		return
	}
	m, rerr := c2dMessage(in)
	if rerr != nil {
		writeReqErr(w, rerr)
		return
	}
	out, status, err := a.hub.sendC2D(h.Name, in.DeviceID, m)
	if err != nil {
		writeErr(w, status, status*1000+4, "%v", err)
		return
	}
	writeJSON(w, 200, map[string]any{"messageId": out.MessageID, "hub": h.Name, "deviceId": in.DeviceID})
}
