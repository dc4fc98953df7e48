package simulator

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

func (s *Sim) startHTTP() error {
	// The control plane is unauthenticated: loopback only.
	if h, _, err := net.SplitHostPort(s.cfg.ControlAddr); err != nil {
		return fmt.Errorf("control address %q: %w", s.cfg.ControlAddr, err)
	} else if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("control address %q: must be a loopback address (the control plane has no authentication)", s.cfg.ControlAddr)
	}
	l, err := s.listen(s.cfg.ControlAddr)
	if err != nil {
		return fmt.Errorf("control listener %s: %w", s.cfg.ControlAddr, err)
	}
	s.ready.ControlURL = "http://" + l.Addr().String()
	s.ready.CRLURL = s.ready.ControlURL + "/crl/issuing.crl"
	srv := &http.Server{Handler: s.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	s.httpSrvs = append(s.httpSrvs, srv)
	go srv.Serve(l)

	el, err := s.listen(s.cfg.ESTAddr)
	if err != nil {
		return fmt.Errorf("EST listener %s: %w", s.cfg.ESTAddr, err)
	}
	s.ready.ESTURL = "https://" + el.Addr().String()
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "EST server not built into this devid-sim", http.StatusNotImplemented)
	})
	if s.cfg.ESTHandler != nil {
		h = s.cfg.ESTHandler(s)
	}
	etls := s.tlsConfig("1.3", false)
	// Who may enroll over EST: certificates chaining to the issuing CA
	// (re-enrollment), to an enrollment group's CA, or to --est-client-ca.
	etls.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := etls.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = s.estClientCAs()
		return c, nil
	}
	esrv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, TLSConfig: etls}
	s.httpSrvs = append(s.httpSrvs, esrv)
	go esrv.Serve(tls.NewListener(el, esrv.TLSConfig))

	dir := s.cfg.StateDir
	s.ready.ServerCA = dir + "/" + fileServerRoot
	s.ready.IssuingCA = dir + "/" + fileIssuingRoot
	s.ready.IssuingChain = dir + "/" + fileIssuingChain
	s.ready.StateDir = dir
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

func writeErr(w http.ResponseWriter, status int, code int, format string, a ...any) {
	eb := errorBody(code, fmt.Sprintf(format, a...))
	w.Header().Set("x-ms-error-code", strconv.Itoa(code))
	writeJSON(w, status, eb)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	if err := dec.Decode(v); err != nil {
		writeErr(w, 400, 400004, "request body is not valid JSON: %v", err)
		return false
	}
	return true
}

// controlHandler serves the control plane: Azure-shaped service REST for
// DPS and hubs plus /sim extensions. See docs/simulator.md.
func (s *Sim) controlHandler() http.Handler {
	mux := http.NewServeMux()
	// DPS service API.
	mux.HandleFunc("PUT /enrollmentGroups/{id}", s.putEnrollment(true))
	mux.HandleFunc("GET /enrollmentGroups/{id}", s.getEnrollment(true))
	mux.HandleFunc("DELETE /enrollmentGroups/{id}", s.deleteEnrollment(true))
	mux.HandleFunc("GET /enrollmentGroups", s.listEnrollments(true))
	mux.HandleFunc("POST /enrollmentGroups/query", s.listEnrollments(true))
	mux.HandleFunc("PUT /enrollments/{id}", s.putEnrollment(false))
	mux.HandleFunc("GET /enrollments/{id}", s.getEnrollment(false))
	mux.HandleFunc("DELETE /enrollments/{id}", s.deleteEnrollment(false))
	mux.HandleFunc("GET /enrollments", s.listEnrollments(false))
	mux.HandleFunc("POST /enrollments/query", s.listEnrollments(false))
	mux.HandleFunc("GET /registrations/{id}", s.getRegistration)
	mux.HandleFunc("DELETE /registrations/{id}", s.deleteRegistration)
	mux.HandleFunc("POST /registrations/{id}/query", s.queryRegistrations)
	mux.HandleFunc("GET /registrations", s.queryRegistrations)
	// Hub service API; /hubs/{hub}/... selects a hub explicitly.
	for _, pre := range []string{"", "/hubs/{hub}"} {
		mux.HandleFunc("PUT "+pre+"/devices/{id}", s.putDevice)
		mux.HandleFunc("GET "+pre+"/devices/{id}", s.getDevice)
		mux.HandleFunc("DELETE "+pre+"/devices/{id}", s.deleteDevice)
		mux.HandleFunc("GET "+pre+"/devices", s.listDevices)
		mux.HandleFunc("GET "+pre+"/twins/{id}", s.getTwin)
		mux.HandleFunc("PATCH "+pre+"/twins/{id}", s.patchTwin(false))
		mux.HandleFunc("PUT "+pre+"/twins/{id}", s.patchTwin(true))
		mux.HandleFunc("POST "+pre+"/twins/{id}/methods", s.invokeMethod)
		mux.HandleFunc("POST "+pre+"/devices/{id}/messages/deviceBound", s.postC2DPath)
	}
	// Simulator extensions.
	mux.HandleFunc("GET /sim/healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /sim/ready", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, s.ready) })
	mux.HandleFunc("GET /sim/hubs", s.getHubs)
	mux.HandleFunc("PATCH /sim/hubs/{name}", s.patchHub)
	mux.HandleFunc("POST /sim/revoke", s.revoke)
	mux.HandleFunc("GET /sim/revoked", s.listRevoked)
	mux.HandleFunc("POST /sim/enrollmentGroups/{id}/{action}", s.setEnrollmentStatus(true))
	mux.HandleFunc("POST /sim/enrollments/{id}/{action}", s.setEnrollmentStatus(false))
	mux.HandleFunc("POST /sim/registrations/{id}/{action}", s.setRegistrationStatus)
	mux.HandleFunc("POST /sim/devices/{hub}/{id}/{action}", s.setDeviceStatus)
	mux.HandleFunc("DELETE /sim/devices/{hub}/{id}", s.deleteDevice)
	mux.HandleFunc("GET /sim/telemetry", s.getTelemetry)
	mux.HandleFunc("DELETE /sim/telemetry", func(w http.ResponseWriter, r *http.Request) {
		if err := s.st.clearTelemetry(); err != nil {
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("POST /sim/c2d", s.postC2D)
	mux.HandleFunc("GET /sim/faults", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, s.faults.list()) })
	mux.HandleFunc("POST /sim/faults", s.postFault)
	mux.HandleFunc("DELETE /sim/faults", func(w http.ResponseWriter, r *http.Request) { s.faults.remove(""); w.WriteHeader(204) })
	mux.HandleFunc("DELETE /sim/faults/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !s.faults.remove(r.PathValue("id")) {
			writeErr(w, 404, 404000, "no fault %q", r.PathValue("id"))
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("GET /sim/connections", s.getConnections)
	mux.HandleFunc("POST /sim/disconnect", s.postDisconnect)
	mux.HandleFunc("GET /crl/issuing.crl", s.getCRL)
	return recoverHTTP(s, mux)
}

func recoverHTTP(s *Sim, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("recovered panic in control plane", "path", r.URL.Path, "panic", fmt.Sprint(v))
				writeErr(w, 500, 500001, "internal error")
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// ---- DPS enrollments ----

func (s *Sim) putEnrollment(group bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var e Enrollment
		if !readJSON(w, r, &e) {
			return
		}
		if group {
			if e.EnrollmentGroupID == "" {
				e.EnrollmentGroupID = id
			}
			if e.EnrollmentGroupID != id {
				writeErr(w, 400, 400004, "enrollmentGroupId %q does not match the path %q", e.EnrollmentGroupID, id)
				return
			}
		} else {
			if e.RegistrationID == "" {
				e.RegistrationID = id
			}
			if !strings.EqualFold(e.RegistrationID, id) {
				writeErr(w, 400, 400004, "registrationId %q does not match the path %q", e.RegistrationID, id)
				return
			}
		}
		if err := e.prepare(); err != nil {
			writeErr(w, 400, 400004, "%v", err)
			return
		}
		s.mu.Lock()
		var old *Enrollment
		if group {
			old = s.groups[id]
		} else {
			old = s.indiv[strings.ToLower(id)]
		}
		if m := r.Header.Get("If-Match"); m != "" && m != "*" && (old == nil || strings.Trim(m, `"`) != old.Etag) {
			s.mu.Unlock()
			writeErr(w, 412, 412002, "etag mismatch")
			return
		}
		now := nowUTC()
		e.CreatedDateTimeUtc = now
		if old != nil {
			e.CreatedDateTimeUtc = old.CreatedDateTimeUtc
		}
		e.LastUpdatedDateTimeUtc = now
		e.Etag = newEtag()
		if group {
			s.groups[id] = &e
		} else {
			s.indiv[strings.ToLower(id)] = &e
		}
		eb := mustJSON(&e)
		var out Enrollment
		_ = json.Unmarshal(eb, &out)
		s.mu.Unlock()
		bkt := bktEnrollments
		if group {
			bkt = bktGroups
		}
		if err := s.st.putRaw(bkt, out.key(), eb); err != nil {
			writeErr(w, 500, 500001, "storage: %v", err)
			return
		}
		status := 200
		if old == nil {
			status = 201
		}
		writeJSON(w, status, &out)
	}
}

func (s *Sim) getEnrollment(group bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		s.mu.Lock()
		var e *Enrollment
		if group {
			e = s.groups[id]
		} else {
			e = s.indiv[strings.ToLower(id)]
		}
		var b []byte
		if e != nil {
			b = mustJSON(e)
		}
		s.mu.Unlock()
		if e == nil {
			writeErr(w, 404, 404201, "Enrollment %q not found.", id)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write(b)
	}
}

func (s *Sim) deleteEnrollment(group bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		s.mu.Lock()
		var old *Enrollment
		bkt := bktEnrollments
		if group {
			old, bkt = s.groups[id], bktGroups
			delete(s.groups, id)
		} else {
			old = s.indiv[strings.ToLower(id)]
			delete(s.indiv, strings.ToLower(id))
		}
		s.mu.Unlock()
		if old == nil {
			writeErr(w, 404, 404201, "Enrollment %q not found.", id)
			return
		}
		// Stored under its key as given (individual: registration id's case).
		_ = s.st.del(bkt, old.key())
		w.WriteHeader(204)
	}
}

func (s *Sim) listEnrollments(group bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		out := []Enrollment{}
		src := s.indiv
		if group {
			src = s.groups
		}
		for _, e := range src {
			var cp Enrollment
			_ = json.Unmarshal(mustJSON(e), &cp)
			out = append(out, cp)
		}
		s.mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
		writeJSON(w, 200, out)
	}
}

func (s *Sim) getRegistration(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.PathValue("id"))
	s.mu.Lock()
	reg := s.regs[id]
	var st RegistrationState
	if reg != nil {
		st = reg.State
	}
	s.mu.Unlock()
	if reg == nil {
		writeErr(w, 404, 404202, "Registration %q not found.", r.PathValue("id"))
		return
	}
	writeJSON(w, 200, st)
}

func (s *Sim) deleteRegistration(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.PathValue("id"))
	s.mu.Lock()
	_, ok := s.regs[id]
	delete(s.regs, id)
	s.mu.Unlock()
	if !ok {
		writeErr(w, 404, 404202, "Registration %q not found.", r.PathValue("id"))
		return
	}
	_ = s.st.del(bktRegs, id)
	w.WriteHeader(204)
}

func (s *Sim) queryRegistrations(w http.ResponseWriter, r *http.Request) {
	group := r.PathValue("id")
	s.mu.Lock()
	out := []RegistrationState{}
	for _, reg := range s.regs {
		if group != "" && (reg.State.X509 == nil || reg.State.X509.EnrollmentGroupID != group) {
			continue
		}
		out = append(out, reg.State)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RegistrationID < out[j].RegistrationID })
	writeJSON(w, 200, out)
}

func (s *Sim) setEnrollmentStatus(group bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, action := r.PathValue("id"), r.PathValue("action")
		if action != "disable" && action != "enable" {
			writeErr(w, 404, 404000, "unknown action %q (disable|enable)", action)
			return
		}
		s.mu.Lock()
		var e *Enrollment
		if group {
			e = s.groups[id]
		} else {
			e = s.indiv[strings.ToLower(id)]
		}
		if e == nil {
			s.mu.Unlock()
			writeErr(w, 404, 404201, "Enrollment %q not found.", id)
			return
		}
		e.ProvisioningStatus = action + "d"
		e.Etag = newEtag()
		e.LastUpdatedDateTimeUtc = nowUTC()
		cp := mustJSON(e)
		key := e.key()
		s.mu.Unlock()
		bkt := bktEnrollments
		if group {
			bkt = bktGroups
		}
		_ = s.st.putRaw(bkt, key, cp)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write(cp)
	}
}

func (s *Sim) setRegistrationStatus(w http.ResponseWriter, r *http.Request) {
	id, action := strings.ToLower(r.PathValue("id")), r.PathValue("action")
	if action != "disable" && action != "enable" {
		writeErr(w, 404, 404000, "unknown action %q (disable|enable)", action)
		return
	}
	s.mu.Lock()
	reg := s.regs[id]
	if reg == nil {
		if action == "enable" {
			s.mu.Unlock()
			writeErr(w, 404, 404202, "Registration %q not found.", id)
			return
		}
		// Disabling an ID that never registered pre-empts its first registration.
		reg = &Registration{State: RegistrationState{RegistrationID: r.PathValue("id"), Status: "unassigned", CreatedDateTimeUtc: nowUTC()}}
		s.regs[id] = reg
	}
	reg.Disabled = action == "disable"
	if reg.Disabled {
		reg.State.Status = "disabled"
	} else if reg.State.Status == "disabled" {
		reg.State.Status = "unassigned"
	}
	reg.State.LastUpdatedDateTimeUtc = nowUTC()
	st := reg.State
	b := mustJSON(reg)
	s.mu.Unlock()
	_ = s.st.putRaw(bktRegs, id, b)
	writeJSON(w, 200, st)
}

// ---- Hubs ----

// hubFor selects the hub of a hub-API request: /hubs/{hub}/ prefix, else
// a Host header equal to a hub host name, else the first hub. An unknown
// {hub} gets a 404 written to w and a nil result.
func (s *Sim) hubFor(w http.ResponseWriter, r *http.Request) *HubConfig {
	if n := r.PathValue("hub"); n != "" {
		h := s.namedHub(n)
		if h == nil {
			writeErr(w, 404, 404000, "unknown hub %q", n)
		}
		return h
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if h := s.hubByHost(host); h != nil {
		return h
	}
	return s.hubs[0]
}

// namedHub finds a hub by name or host name; "" means the first hub.
func (s *Sim) namedHub(name string) *HubConfig {
	if name == "" {
		return s.hubs[0]
	}
	if h := s.hubByName(name); h != nil {
		return h
	}
	return s.hubByHost(name)
}

func (s *Sim) putDevice(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	id := r.PathValue("id")
	var in Device
	if !readJSON(w, r, &in) {
		return
	}
	if in.DeviceID == "" {
		in.DeviceID = id
	}
	if in.DeviceID != id {
		writeErr(w, 400, 400004, "deviceId %q does not match the path %q", in.DeviceID, id)
		return
	}
	if err := ValidDeviceID(id); err != nil {
		writeErr(w, 400, 400004, "%v", err)
		return
	}
	switch in.Authentication.Type {
	case "selfSigned":
		if in.Authentication.X509Thumbprint == nil || in.Authentication.X509Thumbprint.PrimaryThumbprint == "" {
			writeErr(w, 400, 400004, "selfSigned authentication needs x509Thumbprint.primaryThumbprint")
			return
		}
	case "certificateAuthority":
	default:
		writeErr(w, 400, 400004, "authentication.type %q: the simulator supports selfSigned and certificateAuthority", in.Authentication.Type)
		return
	}
	if in.Status == "" {
		in.Status = "enabled"
	}
	key := hub.Name + "/" + id
	s.mu.Lock()
	d := s.devices[key]
	created := d == nil
	if d == nil {
		d = &DeviceRecord{Hub: hub.Name, Device: newDevice(id), Twin: newTwin()}
		s.devices[key] = d
	} else if m := r.Header.Get("If-Match"); m != "" && m != "*" && strings.Trim(m, `"`) != d.Device.Etag {
		s.mu.Unlock()
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
	cp := DeviceRecord{Device: d.Device}
	b := mustJSON(d)
	cl := s.online[key]
	s.mu.Unlock()
	if cl != nil && cp.Device.Status != "enabled" {
		cl.Stop(errClosed)
	}
	if err := s.st.putRaw(bktDevices, key, b); err != nil {
		writeErr(w, 500, 500001, "storage: %v", err)
		return
	}
	status := 200
	if created {
		status = 201
	}
	writeJSON(w, status, cp.Device)
}

func (s *Sim) getDevice(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	key := hub.Name + "/" + r.PathValue("id")
	s.mu.Lock()
	d := s.devices[key]
	var dev Device
	if d != nil {
		dev = d.Device
	}
	s.mu.Unlock()
	if d == nil {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	writeJSON(w, 200, dev)
}

func (s *Sim) deleteDevice(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	key := hub.Name + "/" + r.PathValue("id")
	s.mu.Lock()
	_, ok := s.devices[key]
	delete(s.devices, key)
	cl := s.online[key]
	s.mu.Unlock()
	if !ok {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	if cl != nil {
		cl.Stop(errClosed)
	}
	_ = s.st.del(bktDevices, key)
	w.WriteHeader(204)
}

func (s *Sim) listDevices(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	s.mu.Lock()
	out := []Device{}
	for _, d := range s.devices {
		if d.Hub == hub.Name {
			out = append(out, d.Device)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceID < out[j].DeviceID })
	writeJSON(w, 200, out)
}

func (s *Sim) setDeviceStatus(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	action := r.PathValue("action")
	if action != "disable" && action != "enable" {
		writeErr(w, 404, 404000, "unknown action %q (disable|enable)", action)
		return
	}
	key := hub.Name + "/" + r.PathValue("id")
	s.mu.Lock()
	d := s.devices[key]
	if d == nil {
		s.mu.Unlock()
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	d.Device.Status = action + "d"
	d.Device.StatusUpdatedTime = nowUTC()
	d.Device.Etag = newEtag()
	cp := DeviceRecord{Device: d.Device}
	b := mustJSON(d)
	cl := s.online[key]
	s.mu.Unlock()
	if cl != nil && action == "disable" {
		cl.Stop(errClosed) // a device disabled while connected is simply disconnected (§3.1)
	}
	_ = s.st.putRaw(bktDevices, key, b)
	writeJSON(w, 200, cp.Device)
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

func (s *Sim) getTwin(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	key := hub.Name + "/" + r.PathValue("id")
	s.mu.Lock()
	d := s.devices[key]
	var out map[string]any
	if d != nil {
		out = twinJSON(hub, d)
	}
	s.mu.Unlock()
	if d == nil {
		writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
		return
	}
	writeJSON(w, 200, out)
}

func (s *Sim) patchTwin(replace bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hub := s.hubFor(w, r)
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
		if _, err := s.UpdateDesired(hub.Name, r.PathValue("id"), in.Properties.Desired, in.Tags, replace); err != nil {
			if errors.Is(err, errNotFoundErr) {
				writeErr(w, 404, 404001, "Device %q not found on %s.", r.PathValue("id"), hub.Name)
				return
			}
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		s.getTwin(w, r)
	}
}

func (s *Sim) invokeMethod(w http.ResponseWriter, r *http.Request) {
	hub := s.hubFor(w, r)
	if hub == nil {
		return
	}
	var in struct {
		MethodName               string          `json:"methodName"`
		Payload                  json.RawMessage `json:"payload"`
		ResponseTimeoutInSeconds int             `json:"responseTimeoutInSeconds"`
		ConnectTimeoutInSeconds  int             `json:"connectTimeoutInSeconds"`
	}
	if !readJSON(w, r, &in) {
		return
	}
	if in.MethodName == "" {
		writeErr(w, 400, 400004, "methodName is required")
		return
	}
	if len(in.Payload) > hubMaxMethod {
		writeErr(w, 413, 413001, "method payload exceeds 128 KB")
		return
	}
	rt := in.ResponseTimeoutInSeconds
	if rt == 0 {
		rt = 30
	}
	if rt < 5 || rt > 300 || in.ConnectTimeoutInSeconds < 0 || in.ConnectTimeoutInSeconds > 300 {
		writeErr(w, 400, 400027, "responseTimeoutInSeconds must be 5..300 and connectTimeoutInSeconds 0..300")
		return
	}
	if st, _ := s.faults.status(hub.Name, r.PathValue("id"), "method"); st != 0 {
		writeErr(w, st, st*1000+1, "Injected fault.")
		return
	}
	status, payload, err := s.InvokeMethod(hub.Name, r.PathValue("id"), in.MethodName, in.Payload,
		time.Duration(rt)*time.Second, time.Duration(in.ConnectTimeoutInSeconds)*time.Second)
	if err != nil {
		switch status {
		case 504:
			writeErr(w, 504, 504101, "Timed out waiting for the response from device.")
		default:
			writeErr(w, 404, 404103, "Device %q is not online: %v", r.PathValue("id"), err)
		}
		return
	}
	var p any
	if len(payload) > 0 {
		if json.Unmarshal(payload, &p) != nil {
			p = string(payload)
		}
	}
	writeJSON(w, 200, map[string]any{"status": status, "payload": p})
}

// ---- /sim ----

func (s *Sim) getHubs(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := s.hubsLocked()
	s.mu.Unlock()
	writeJSON(w, 200, out)
}

// hubsLocked copies every hub's settings; s.mu must be held.
func (s *Sim) hubsLocked() []HubConfig {
	out := []HubConfig{}
	for _, h := range s.hubs {
		out = append(out, *h)
	}
	return out
}

func (s *Sim) patchHub(w http.ResponseWriter, r *http.Request) {
	h := s.hubByName(r.PathValue("name"))
	if h == nil {
		writeErr(w, 404, 404000, "unknown hub %q", r.PathValue("name"))
		return
	}
	var in struct {
		AllocationWeight      *int  `json:"allocationWeight"`
		ApplyAllocationPolicy *bool `json:"applyAllocationPolicy"`
		LatencyMs             *int  `json:"latencyMs"`
	}
	if !readJSON(w, r, &in) {
		return
	}
	s.mu.Lock()
	if in.AllocationWeight != nil {
		if *in.AllocationWeight < 1 || *in.AllocationWeight > 1000 {
			s.mu.Unlock()
			writeErr(w, 400, 400004, "allocationWeight must be 1..1000")
			return
		}
		h.AllocationWeight = *in.AllocationWeight
	}
	if in.ApplyAllocationPolicy != nil {
		h.ApplyAllocationPolicy = *in.ApplyAllocationPolicy
	}
	if in.LatencyMs != nil {
		h.LatencyMs = *in.LatencyMs
	}
	all := s.hubsLocked()
	cp := *h
	s.mu.Unlock()
	b, _ := json.Marshal(all)
	_ = s.st.putMeta("hubs", b)
	writeJSON(w, 200, cp)
}

// RevokeRequest names what to revoke: a certificate (PEM), a thumbprint
// (SHA-1 or SHA-256 hex), a serial number (hex, optional issuer DN), or a
// hub device (its registered thumbprints).
type RevokeRequest struct {
	Certificate string `json:"certificate,omitempty"`
	Thumbprint  string `json:"thumbprint,omitempty"`
	Serial      string `json:"serial,omitempty"`
	Issuer      string `json:"issuer,omitempty"`
	Hub         string `json:"hub,omitempty"`
	DeviceID    string `json:"deviceId,omitempty"`
	// CRL (PEM, DER or base64 DER) revokes every listed serial issued by
	// the CA that signed it; Chain (PEM) may add CA certificates between
	// an enrollment group's signing certificate and the CRL signer.
	CRL   string `json:"crl,omitempty"`
	Chain string `json:"chain,omitempty"`
}

func (s *Sim) revoke(w http.ResponseWriter, r *http.Request) {
	var in RevokeRequest
	if !readJSON(w, r, &in) {
		return
	}
	var entries []revokedCert
	now := nowUTC()
	switch {
	case in.CRL != "":
		var err error
		if entries, err = s.crlEntries(in.CRL, in.Chain); err != nil {
			writeErr(w, 400, 400004, "%v", err)
			return
		}
	case in.Certificate != "":
		certs, err := ParsePEMCerts([]byte(in.Certificate))
		if err != nil {
			writeErr(w, 400, 400004, "certificate: %v", err)
			return
		}
		for _, c := range certs[:1] {
			_, t := Thumbprints(c)
			entries = append(entries, revokedCert{SHA256: t, Serial: fmt.Sprintf("%X", c.SerialNumber), Issuer: c.Issuer.String(),
				Subject: c.Subject.String(), RevokedAt: now, IssuedBy: c.CheckSignatureFrom(s.PKI.IssuingCA) == nil})
		}
	case in.Thumbprint != "":
		entries = append(entries, revokedCert{SHA256: strings.ToUpper(strings.ReplaceAll(in.Thumbprint, ":", "")), RevokedAt: now})
	case in.Serial != "":
		ser := strings.ToUpper(strings.TrimLeft(strings.ReplaceAll(in.Serial, ":", ""), "0"))
		entries = append(entries, revokedCert{SHA256: "serial:" + ser + "|" + in.Issuer, Serial: ser, Issuer: in.Issuer, RevokedAt: now,
			IssuedBy: in.Issuer == "" || in.Issuer == s.PKI.IssuingCA.Subject.String()})
	case in.DeviceID != "":
		h := s.namedHub(in.Hub)
		if h == nil {
			writeErr(w, 404, 404000, "unknown hub %q", in.Hub)
			return
		}
		s.mu.Lock()
		d := s.devices[h.Name+"/"+in.DeviceID]
		if d != nil && d.Device.Authentication.X509Thumbprint != nil {
			for _, t := range []string{d.Device.Authentication.X509Thumbprint.PrimaryThumbprint, d.Device.Authentication.X509Thumbprint.SecondaryThumbprint} {
				if t != "" {
					entries = append(entries, revokedCert{SHA256: strings.ToUpper(t), Subject: "CN=" + in.DeviceID, RevokedAt: now})
				}
			}
		}
		s.mu.Unlock()
		if d == nil {
			writeErr(w, 404, 404001, "Device %q not found on %s.", in.DeviceID, h.Name)
			return
		}
	default:
		writeErr(w, 400, 400004, "give crl, certificate, thumbprint, serial or deviceId")
		return
	}
	s.mu.Lock()
	for _, e := range entries {
		s.revoked[e.SHA256] = e
	}
	s.crlNum++
	n := s.crlNum
	// Drop live connections that now use a revoked certificate.
	var kick []*mqtt.Client
	s.cmu.RLock()
	for cl, c := range s.conns {
		if c.leaf == nil {
			continue
		}
		for _, e := range entries {
			t1, t256 := Thumbprints(c.leaf)
			if e.SHA256 == t256 || e.SHA256 == t1 || e.matchesSerial(c.leaf) {
				kick = append(kick, cl)
			}
		}
	}
	s.cmu.RUnlock()
	s.mu.Unlock()
	for _, e := range entries {
		_ = s.st.put(bktRevoked, e.SHA256, e)
	}
	_ = s.st.putMeta("crlNumber", []byte(strconv.FormatInt(n, 10)))
	for _, cl := range kick {
		cl.Stop(errClosed)
	}
	writeJSON(w, 200, map[string]any{"revoked": entries, "disconnected": len(kick)})
}

func (s *Sim) listRevoked(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []revokedCert{}
	for _, e := range s.revoked {
		out = append(out, e)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RevokedAt < out[j].RevokedAt })
	writeJSON(w, 200, out)
}

func (s *Sim) getCRL(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	var entries []x509.RevocationListEntry
	for _, e := range s.revoked {
		if !e.IssuedBy || e.Serial == "" {
			continue
		}
		n, ok := new(big.Int).SetString(e.Serial, 16)
		if !ok {
			continue
		}
		t, _ := time.Parse("2006-01-02T15:04:05.0000000Z", e.RevokedAt)
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: t})
	}
	num := s.crlNum + 1
	s.mu.Unlock()
	der, err := s.PKI.CRL(num, entries)
	if err != nil {
		writeErr(w, 500, 500001, "crl: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	_, _ = w.Write(der)
}

// queryParam parses the query parameter name with parse when it is present,
// keeping def otherwise. On a bad value it writes a 400 naming the parameter
// and what it must be, and returns false.
func queryParam[T any](w http.ResponseWriter, q url.Values, name, want string, def T, parse func(string) (T, bool)) (T, bool) {
	v := q.Get(name)
	if v == "" {
		return def, true
	}
	x, ok := parse(v)
	if !ok {
		writeErr(w, 400, 400004, "%s must be %s, got %q", name, want, v)
		return def, false
	}
	return x, true
}

func (s *Sim) getTelemetry(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	intAtLeast := func(lo int) func(string) (int, bool) {
		return func(v string) (int, bool) {
			n, err := strconv.Atoi(v)
			return n, err == nil && n >= lo
		}
	}
	after, ok := queryParam(w, q, "after", "a non-negative integer", uint64(0), func(v string) (uint64, bool) {
		n, err := strconv.ParseUint(v, 10, 64)
		return n, err == nil
	})
	if !ok {
		return
	}
	limit, ok := queryParam(w, q, "limit", "a positive integer", 1000, intAtLeast(1))
	if !ok {
		return
	}
	min, ok := queryParam(w, q, "min", "a non-negative integer", 1, intAtLeast(0))
	if !ok {
		return
	}
	wait, ok := queryParam(w, q, "wait", "a duration up to 5m, e.g. 10s", time.Duration(0), func(v string) (time.Duration, bool) {
		d, err := time.ParseDuration(v)
		return d, err == nil && d >= 0 && d <= 5*time.Minute
	})
	if !ok {
		return
	}
	hub, dev := q.Get("hub"), q.Get("deviceId")
	match := func(t *TelemetryRecord) bool {
		return (hub == "" || t.Hub == hub || strings.EqualFold(hub, s.hostOf(t.Hub))) && (dev == "" || t.DeviceID == dev)
	}
	deadline := time.Now().Add(wait)
	for {
		recs, err := s.st.telemetry(after, limit, match)
		if err != nil {
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		if len(recs) >= min || !time.Now().Before(deadline) || s.closed.Load() {
			if recs == nil {
				recs = []TelemetryRecord{}
			}
			writeJSON(w, 200, recs)
			return
		}
		s.waitTelemetry(time.Until(deadline), r)
	}
}

func (s *Sim) hostOf(hub string) string {
	if h := s.hubByName(hub); h != nil {
		return h.Host
	}
	return ""
}

// waitTelemetry blocks until new telemetry arrives, d passes or the
// request is cancelled.
func (s *Sim) waitTelemetry(d time.Duration, r *http.Request) {
	done := make(chan struct{})
	t := time.AfterFunc(min(d, time.Second), func() {
		s.telCond.L.Lock()
		s.telCond.Broadcast()
		s.telCond.L.Unlock()
	})
	defer t.Stop()
	go func() {
		select {
		case <-r.Context().Done():
			s.telCond.L.Lock()
			s.telCond.Broadcast()
			s.telCond.L.Unlock()
		case <-done:
		}
	}()
	s.telCond.L.Lock()
	s.telCond.Wait()
	s.telCond.L.Unlock()
	close(done)
}

// C2DRequest is the body of POST /sim/c2d.
type C2DRequest struct {
	Hub           string            `json:"hub,omitempty"`
	DeviceID      string            `json:"deviceId"`
	Payload       string            `json:"payload,omitempty"`
	PayloadBase64 string            `json:"payloadBase64,omitempty"`
	Properties    map[string]string `json:"properties,omitempty"`
	MessageID     string            `json:"messageId,omitempty"`
	CorrelationID string            `json:"correlationId,omitempty"`
	ContentType   string            `json:"contentType,omitempty"`
	ContentEnc    string            `json:"contentEncoding,omitempty"`
	Ack           string            `json:"ack,omitempty"`
}

func (s *Sim) postC2D(w http.ResponseWriter, r *http.Request) {
	var in C2DRequest
	if !readJSON(w, r, &in) {
		return
	}
	s.c2dFromRequest(w, in)
}

func (s *Sim) postC2DPath(w http.ResponseWriter, r *http.Request) {
	var in C2DRequest
	if !readJSON(w, r, &in) {
		return
	}
	h := s.hubFor(w, r)
	if h == nil {
		return
	}
	in.Hub, in.DeviceID = h.Name, r.PathValue("id")
	s.c2dFromRequest(w, in)
}

func (s *Sim) c2dFromRequest(w http.ResponseWriter, in C2DRequest) {
	h := s.namedHub(in.Hub)
	if h == nil {
		writeErr(w, 404, 404000, "unknown hub %q", in.Hub)
		return
	}
	if in.DeviceID == "" {
		writeErr(w, 400, 400004, "deviceId is required")
		return
	}
	switch in.Ack {
	case "", "none", "positive", "negative", "full":
	default:
		writeErr(w, 400, 400004, "ack must be none, positive, negative or full")
		return
	}
	payload := []byte(in.Payload)
	if in.PayloadBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(in.PayloadBase64)
		if err != nil {
			writeErr(w, 400, 400004, "payloadBase64: %v", err)
			return
		}
		payload = b
	}
	m := C2DMessage{MessageID: in.MessageID, Payload: payload, Ack: in.Ack}
	for k, v := range map[string]string{"$.cid": in.CorrelationID, "$.ct": in.ContentType, "$.ce": in.ContentEnc} {
		if v != "" {
			m.Properties = append(m.Properties, Property{Name: k, Value: v})
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
	out, status, err := s.SendC2D(h.Name, in.DeviceID, m)
	if err != nil {
		writeErr(w, status, status*1000+4, "%v", err)
		return
	}
	writeJSON(w, 200, map[string]any{"messageId": out.MessageID, "hub": h.Name, "deviceId": in.DeviceID})
}

func (s *Sim) postFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if !readJSON(w, r, &f) {
		return
	}
	out, err := s.faults.add(f)
	if err != nil {
		writeErr(w, 400, 400004, "%v", err)
		return
	}
	if out.RefuseSeconds > 0 || out.DropAfter > 0 {
		// Refusal and drop faults also hit live connections that match.
		s.cmu.RLock()
		var kick []*mqtt.Client
		for cl, c := range s.conns {
			if out.RefuseSeconds > 0 && out.matches(c.role, c.id, "connect") {
				kick = append(kick, cl)
			}
		}
		s.cmu.RUnlock()
		for _, cl := range kick {
			cl.Stop(errClosed)
		}
	}
	writeJSON(w, 201, out)
}

// ConnectionInfo describes one live MQTT connection.
type ConnectionInfo struct {
	Endpoint   string `json:"endpoint"` // "dps" or hub name
	ID         string `json:"id"`
	APIVersion string `json:"apiVersion"`
	Remote     string `json:"remote"`
	Listener   string `json:"listener"`
	Subject    string `json:"subject"`
}

func (s *Sim) getConnections(w http.ResponseWriter, r *http.Request) {
	s.cmu.RLock()
	out := []ConnectionInfo{}
	for cl, c := range s.conns {
		ci := ConnectionInfo{Endpoint: c.role, ID: c.id, APIVersion: c.apiVer, Remote: cl.Net.Remote, Listener: cl.Net.Listener}
		if c.leaf != nil {
			ci.Subject = c.leaf.Subject.String()
		}
		out = append(out, ci)
	}
	s.cmu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint+out[i].ID < out[j].Endpoint+out[j].ID })
	writeJSON(w, 200, out)
}

func (s *Sim) postDisconnect(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Endpoint string `json:"endpoint"`
		ID       string `json:"id"`
	}
	if !readJSON(w, r, &in) {
		return
	}
	s.cmu.RLock()
	var kick []*mqtt.Client
	for cl, c := range s.conns {
		if (in.Endpoint == "" || c.role == in.Endpoint) && (in.ID == "" || strings.EqualFold(c.id, in.ID)) {
			kick = append(kick, cl)
		}
	}
	s.cmu.RUnlock()
	for _, cl := range kick {
		cl.Stop(errClosed)
	}
	writeJSON(w, 200, map[string]int{"disconnected": len(kick)})
}

func (s *Sim) estClientCAs() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.PKI.IssuingRoot)
	p.AddCert(s.PKI.IssuingCA)
	for _, c := range s.cfg.ESTClientCAs {
		p.AddCert(c)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.groups {
		for _, c := range g.certs {
			p.AddCert(c)
		}
	}
	return p
}
