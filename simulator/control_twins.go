package simulator

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// twinsAPI serves device twins and direct methods of the hub service API:
// /twins/{id} and /twins/{id}/methods.
type twinsAPI struct {
	reg    *registry
	hub    *hubService
	faults *faultSet
}

func (a *twinsAPI) routes(mux *http.ServeMux) {
	hubRoutes(mux, "GET", "/twins/{id}", a.get)
	hubRoutes(mux, "PATCH", "/twins/{id}", a.update(false))
	hubRoutes(mux, "PUT", "/twins/{id}", a.update(true))
	hubRoutes(mux, "POST", "/twins/{id}/methods", a.invoke)
}

func twinJSON(hub *HubConfig, d *DeviceRecord) map[string]any {
	return map[string]any{
		"deviceId":                  d.Device.DeviceID,
		"etag":                      d.Device.Etag,
		"deviceEtag":                d.Device.Etag,
		"version":                   d.Twin.Version,
		"status":                    d.Device.Status,
		"connectionState":           d.Device.ConnectionState,
		"lastActivityTime":          d.Device.LastActivityTime,
		"cloudToDeviceMessageCount": d.Device.CloudToDeviceMessageCount,
		"authenticationType":        d.Device.Authentication.Type,
		"x509Thumbprint":            d.Device.Authentication.X509Thumbprint,
		"tags":                      cloneMap(d.Twin.Tags),
		"properties": map[string]any{
			"desired":  withVersion(d.Twin.Desired, d.Twin.DesiredVersion),
			"reported": withVersion(d.Twin.Reported, d.Twin.ReportedVersion),
		},
		"capabilities": d.Device.Capabilities,
		"x-sim-hub":    hub.Host,
	}
}

func (a *twinsAPI) get(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	a.reg.mu.Lock()
	d := a.reg.devices[deviceKey(hub.Name, r.PathValue("id"))]
	var out map[string]any
	if d != nil {
		out = twinJSON(hub, d)
	}
	a.reg.mu.Unlock()
	if d == nil {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	writeJSON(w, 200, out)
}

// update merges (PATCH) or replaces (PUT) tags and desired properties;
// the desired change is pushed to the device.
func (a *twinsAPI) update(replace bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hub := hubFor(a.reg, w, r)
		if hub == nil {
			return
		}
		var in struct {
			Tags       map[string]any `json:"tags"`
			Properties struct {
				Desired map[string]any `json:"desired"`
			} `json:"properties"`
		}
		if !readJSON(w, r, &in) {
			return
		}
		if b, _ := json.Marshal(in.Properties.Desired); len(b) > hubMaxTwin {
			writeErr(w, 400, 400004, "desired properties exceed 32 KB")
			return
		}
		if _, err := a.hub.updateDesired(hub.Name, r.PathValue("id"), in.Properties.Desired, in.Tags, replace); err != nil {
			if errors.Is(err, errNotFoundErr) {
				writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
				return
			}
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		a.get(w, r)
	}
}

// methodCall is the body of POST /twins/{id}/methods.
type methodCall struct {
	MethodName               string          `json:"methodName"`
	Payload                  json.RawMessage `json:"payload"`
	ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
	ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
}

// check validates the call and returns the response timeout in seconds.
func (in *methodCall) check() (int, *requestError) {
	if in.MethodName == "" {
		return 0, invalid("methodName is required")
	}
	if len(in.Payload) > hubMaxMethod {
		return 0, &requestError{413, 413001, "method payload exceeds 128 KB"}
	}
	rt := in.ResponseTimeoutInSeconds
	if rt == 0 {
		rt = 30
	}
	if rt < 5 || rt > 300 || in.ConnectTimeoutInSeconds < 0 || in.ConnectTimeoutInSeconds > 300 {
		return 0, &requestError{400, 400027, "responseTimeoutInSeconds must be 5..300 and connectTimeoutInSeconds 0..300"}
	}
	return rt, nil
}

// invoke calls a direct method on the device and returns its answer.
func (a *twinsAPI) invoke(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	var in methodCall
	if !readJSON(w, r, &in) {
		return
	}
	rt, rerr := in.check()
	if rerr != nil {
		writeReqErr(w, rerr)
		return
	}
	id := r.PathValue("id")
	if st, _ := a.faults.status(hub.Name, id, "method"); st != 0 {
		writeErr(w, st, st*1000+1, "Injected fault.")
		return
	}
	status, payload, err := a.hub.invokeMethod(hub.Name, id, in.MethodName, in.Payload,
		time.Duration(rt)*time.Second, time.Duration(in.ConnectTimeoutInSeconds)*time.Second)
	if err != nil {
		if status == 504 {
			writeErr(w, 504, 504101, "Timed out waiting for the response from device.")
		} else {
			writeErr(w, 404, 404103, "Device %q is not online: %v", id, err)
		}
		return
	}
	var p any
	if len(payload) > 0 && json.Unmarshal(payload, &p) != nil {
		p = string(payload)
	}
	writeJSON(w, 200, map[string]any{"status": status, "payload": p})
}
