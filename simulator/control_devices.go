package simulator

import (
	"net/http"
	"sort"
	"strings"
)

// devicesAPI serves hub device identities: the hub service API's
// /devices and the /sim/devices disable|enable|delete calls. Disabling or
// deleting a connected device disconnects it at once.
type devicesAPI struct{ reg *registry }

func (a *devicesAPI) routes(mux *http.ServeMux) {
	hubRoutes(mux, "PUT", "/devices/{id}", a.put)
	hubRoutes(mux, "GET", "/devices/{id}", a.get)
	hubRoutes(mux, "DELETE", "/devices/{id}", a.delete)
	hubRoutes(mux, "GET", "/devices", a.list)
	mux.HandleFunc("POST /sim/devices/{hub}/{id}/{action}", a.setStatus)
	mux.HandleFunc("DELETE /sim/devices/{hub}/{id}", a.delete)
}

// checkDevice validates a device body for path ID id, filling in defaults.
func checkDevice(in *Device, id string) *requestError {
	if in.DeviceID == "" {
		in.DeviceID = id
	}
	if in.DeviceID != id {
		return invalid("deviceId %q does not match the path %q", in.DeviceID, id)
	}
	if err := ValidDeviceID(id); err != nil {
		return invalid("%v", err)
	}
	switch in.Authentication.Type {
	case "selfSigned":
		if in.Authentication.X509Thumbprint == nil || in.Authentication.X509Thumbprint.PrimaryThumbprint == "" {
			return invalid("selfSigned authentication needs x509Thumbprint.primaryThumbprint")
		}
	case "certificateAuthority":
	default:
		return invalid("authentication.type %q: the simulator supports selfSigned and certificateAuthority", in.Authentication.Type)
	}
	if in.Status == "" {
		in.Status = "enabled"
	}
	return nil
}

func (a *devicesAPI) put(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	id := r.PathValue("id")
	var in Device
	if !readJSON(w, r, &in) {
		return
	}
	if err := checkDevice(&in, id); err != nil {
		writeReqErr(w, err)
		return
	}
	key := deviceKey(hub.Name, id)
	a.reg.mu.Lock()
	d := a.reg.devices[key]
	created := d == nil
	if d == nil {
		d = &DeviceRecord{Hub: hub.Name, Device: newDevice(id), Twin: newTwin()}
		a.reg.devices[key] = d
	} else if m := r.Header.Get("If-Match"); m != "" && m != "*" && strings.Trim(m, `"`) != d.Device.Etag {
		a.reg.mu.Unlock()
		writeErr(w, 412, 412002, "etag mismatch")
		return
	}
	d.Device.Authentication = in.Authentication
	if d.Device.Status != in.Status {
		d.Device.Status = in.Status
		d.Device.StatusUpdatedTime = nowUTC()
	}
	d.Device.StatusReason = in.StatusReason
	d.Device.Etag = newEtag()
	d.CAIssued = false
	dev := d.Device
	b := mustJSON(d)
	cl := a.reg.online[key]
	a.reg.mu.Unlock()
	if cl != nil && dev.Status != "enabled" {
		cl.Stop(errClosed)
	}
	if err := a.reg.db.putRaw(bktDevices, key, b); err != nil {
		writeErr(w, 500, 500001, "storage: %v", err)
		return
	}
	status := 200
	if created {
		status = 201
	}
	writeJSON(w, status, dev)
}

func (a *devicesAPI) get(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	a.reg.mu.Lock()
	d := a.reg.devices[deviceKey(hub.Name, r.PathValue("id"))]
	var dev Device
	if d != nil {
		dev = d.Device
	}
	a.reg.mu.Unlock()
	if d == nil {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	writeJSON(w, 200, dev)
}

func (a *devicesAPI) delete(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	key := deviceKey(hub.Name, r.PathValue("id"))
	a.reg.mu.Lock()
	_, ok := a.reg.devices[key]
	delete(a.reg.devices, key)
	cl := a.reg.online[key]
	a.reg.mu.Unlock()
	if !ok {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	if cl != nil {
		cl.Stop(errClosed)
	}
	_ = a.reg.db.del(bktDevices, key)
	w.WriteHeader(204)
}

func (a *devicesAPI) list(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	a.reg.mu.Lock()
	out := []Device{}
	for _, d := range a.reg.devices {
		if d.Hub == hub.Name {
			out = append(out, d.Device)
		}
	}
	a.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceID < out[j].DeviceID })
	writeJSON(w, 200, out)
}

// setStatus disables or enables a device; a device disabled while
// connected is simply disconnected, as IoT Hub does.
func (a *devicesAPI) setStatus(w http.ResponseWriter, r *http.Request) {
	hub := hubFor(a.reg, w, r)
	if hub == nil {
		return
	}
	action := statusAction(w, r)
	if action == "" {
		return
	}
	key := deviceKey(hub.Name, r.PathValue("id"))
	a.reg.mu.Lock()
	d := a.reg.devices[key]
	if d == nil {
		a.reg.mu.Unlock()
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	d.Device.Status = action + "d"
	d.Device.StatusUpdatedTime = nowUTC()
	d.Device.Etag = newEtag()
	dev := d.Device
	b := mustJSON(d)
	cl := a.reg.online[key]
	a.reg.mu.Unlock()
	if cl != nil && action == "disable" {
		cl.Stop(errClosed)
	}
	_ = a.reg.db.putRaw(bktDevices, key, b)
	writeJSON(w, 200, dev)
}
