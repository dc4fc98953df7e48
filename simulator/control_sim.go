package simulator

import (
	"encoding/json"
	"net/http"
	"strings"

	"devid/simulator/simapi"
)

// simAPI serves the simulator's own status: /sim/healthz and /sim/ready.
type simAPI struct{ ready *simapi.Ready }

func (a *simAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /sim/ready", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, a.ready) })
}

// hubsAPI serves the hubs' allocation settings (/sim/hubs), persisted
// across restarts.
type hubsAPI struct{ reg *registry }

func (a *hubsAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/hubs", a.list)
	mux.HandleFunc("PATCH /sim/hubs/{name}", a.patch)
}

func (a *hubsAPI) list(w http.ResponseWriter, r *http.Request) {
	a.reg.mu.Lock()
	out := a.reg.hubsLocked()
	a.reg.mu.Unlock()
	writeJSON(w, 200, out)
}

func (a *hubsAPI) patch(w http.ResponseWriter, r *http.Request) {
	h := a.reg.hubByName(r.PathValue("name"))
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
	if in.AllocationWeight != nil && (*in.AllocationWeight < 1 || *in.AllocationWeight > 1000) {
		writeErr(w, 400, 400004, "allocationWeight must be 1..1000")
		return
	}
	a.reg.mu.Lock()
	if in.AllocationWeight != nil {
		h.AllocationWeight = *in.AllocationWeight
	}
	if in.ApplyAllocationPolicy != nil {
		h.ApplyAllocationPolicy = *in.ApplyAllocationPolicy
	}
	if in.LatencyMs != nil {
		h.LatencyMs = *in.LatencyMs
	}
	all := a.reg.hubsLocked()
	cp := *h
	a.reg.mu.Unlock()
	b, _ := json.Marshal(all)
	_ = a.reg.db.putMeta("hubs", b)
	writeJSON(w, 200, cp)
}

// revocationsAPI serves /sim/revoke, /sim/revoked and the issuing CA's CRL.
type revocationsAPI struct{ rev *revoker }

func (a *revocationsAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sim/revoke", a.revoke)
	mux.HandleFunc("GET /sim/revoked", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, a.rev.list()) })
	mux.HandleFunc("GET /crl/issuing.crl", a.crl)
}

func (a *revocationsAPI) revoke(w http.ResponseWriter, r *http.Request) {
	var in simapi.RevokeRequest
	if !readJSON(w, r, &in) {
		return
	}
	entries, rerr := a.rev.entries(in)
	if rerr != nil {
		writeReqErr(w, rerr)
		return
	}
	n := a.rev.revoke(entries)
	writeJSON(w, 200, map[string]any{"revoked": entries, "disconnected": n})
}

func (a *revocationsAPI) crl(w http.ResponseWriter, r *http.Request) {
	der, err := a.rev.crl()
	if err != nil {
		writeErr(w, 500, 500001, "crl: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	_, _ = w.Write(der)
}

// faultsAPI serves /sim/faults.
type faultsAPI struct {
	faults *faultSet
	conns  *connTable
}

func (a *faultsAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/faults", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, a.faults.list()) })
	mux.HandleFunc("POST /sim/faults", a.post)
	mux.HandleFunc("DELETE /sim/faults", func(w http.ResponseWriter, r *http.Request) { a.faults.remove(""); w.WriteHeader(204) })
	mux.HandleFunc("DELETE /sim/faults/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !a.faults.remove(r.PathValue("id")) {
			writeErr(w, 404, 404000, "no fault %q", r.PathValue("id"))
			return
		}
		w.WriteHeader(204)
	})
}

func (a *faultsAPI) post(w http.ResponseWriter, r *http.Request) {
	var in simapi.Fault
	if !readJSON(w, r, &in) {
		return
	}
	f, err := a.faults.add(in)
	if err != nil {
		writeErr(w, 400, 400004, "%v", err)
		return
	}
	if f.RefuseSeconds > 0 {
		// A refusal also closes the live connections it matches.
		a.conns.kick(func(c *conn) bool { return f.matches(c.role, c.id, "connect") })
	}
	writeJSON(w, 201, f.Fault)
}

// connectionsAPI lists and closes live MQTT connections.
type connectionsAPI struct{ conns *connTable }

func (a *connectionsAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/connections", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, a.conns.list()) })
	mux.HandleFunc("POST /sim/disconnect", a.disconnect)
}

func (a *connectionsAPI) disconnect(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Endpoint string `json:"endpoint"`
		ID       string `json:"id"`
	}
	if !readJSON(w, r, &in) {
		return
	}
	n := a.conns.kick(func(c *conn) bool {
		return (in.Endpoint == "" || c.role == in.Endpoint) && (in.ID == "" || strings.EqualFold(c.id, in.ID))
	})
	writeJSON(w, 200, map[string]int{"disconnected": n})
}
