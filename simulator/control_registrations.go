package simulator

import (
	"net/http"
	"sort"
	"strings"
)

// registrationsAPI serves DPS registration records: the service API's
// /registrations and the /sim disable|enable calls.
type registrationsAPI struct{ reg *registry }

func (a *registrationsAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /registrations/{id}", a.get)
	mux.HandleFunc("DELETE /registrations/{id}", a.delete)
	mux.HandleFunc("POST /registrations/{id}/query", a.query)
	mux.HandleFunc("GET /registrations", a.query)
	mux.HandleFunc("POST /sim/registrations/{id}/{action}", a.setStatus)
}

func (a *registrationsAPI) get(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.PathValue("id"))
	a.reg.mu.Lock()
	reg := a.reg.regs[id]
	var st RegistrationState
	if reg != nil {
		st = reg.State
	}
	a.reg.mu.Unlock()
	if reg == nil {
		writeErr(w, 404, 404202, "Registration %q not found.", r.PathValue("id"))
		return
	}
	writeJSON(w, 200, st)
}

// delete forgets a registration: the device's next registration is an
// initial assignment.
func (a *registrationsAPI) delete(w http.ResponseWriter, r *http.Request) {
	id := strings.ToLower(r.PathValue("id"))
	a.reg.mu.Lock()
	_, ok := a.reg.regs[id]
	delete(a.reg.regs, id)
	a.reg.mu.Unlock()
	if !ok {
		writeErr(w, 404, 404202, "Registration %q not found.", r.PathValue("id"))
		return
	}
	_ = a.reg.db.del(bktRegs, id)
	w.WriteHeader(204)
}

// query lists registration states, of one enrollment group when the path
// names one.
func (a *registrationsAPI) query(w http.ResponseWriter, r *http.Request) {
	group := r.PathValue("id")
	a.reg.mu.Lock()
	out := []RegistrationState{}
	for _, reg := range a.reg.regs {
		if group != "" && (reg.State.X509 == nil || reg.State.X509.EnrollmentGroupID != group) {
			continue
		}
		out = append(out, reg.State)
	}
	a.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RegistrationID < out[j].RegistrationID })
	writeJSON(w, 200, out)
}

// setStatus disables or enables a registration. A disabled registration
// gets DPS result "disabled", even before its first registration.
func (a *registrationsAPI) setStatus(w http.ResponseWriter, r *http.Request) {
	id, action := strings.ToLower(r.PathValue("id")), statusAction(w, r)
	if action == "" {
		return
	}
	a.reg.mu.Lock()
	reg := a.reg.regs[id]
	if reg == nil {
		if action == "enable" {
			a.reg.mu.Unlock()
			writeErr(w, 404, 404202, "Registration %q not found.", id)
			return
		}
		// Disabling an ID that never registered pre-empts its first registration.
		reg = &Registration{State: RegistrationState{RegistrationID: r.PathValue("id"), Status: "unassigned", CreatedDateTimeUtc: nowUTC()}}
		a.reg.regs[id] = reg
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
	a.reg.mu.Unlock()
	_ = a.reg.db.putRaw(bktRegs, id, b)
	writeJSON(w, 200, st)
}
