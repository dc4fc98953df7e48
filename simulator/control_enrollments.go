package simulator

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
)

// enrollmentsAPI serves the DPS service API of one kind of enrollment:
// /enrollmentGroups (group) or /enrollments (individual), plus the /sim
// disable|enable calls.
type enrollmentsAPI struct {
	reg   *registry
	group bool
}

func (a *enrollmentsAPI) routes(mux *http.ServeMux) {
	coll := "/enrollments"
	if a.group {
		coll = "/enrollmentGroups"
	}
	mux.HandleFunc("PUT "+coll+"/{id}", a.put)
	mux.HandleFunc("GET "+coll+"/{id}", a.get)
	mux.HandleFunc("DELETE "+coll+"/{id}", a.delete)
	mux.HandleFunc("GET "+coll, a.list)
	mux.HandleFunc("POST "+coll+"/query", a.list)
	mux.HandleFunc("POST /sim"+coll+"/{id}/{action}", a.setStatus)
}

// all is the map of this kind; individual enrollments are keyed in lower case.
func (a *enrollmentsAPI) all() map[string]*Enrollment {
	if a.group {
		return a.reg.groups
	}
	return a.reg.indiv
}

func (a *enrollmentsAPI) key(id string) string {
	if a.group {
		return id
	}
	return strings.ToLower(id)
}

func (a *enrollmentsAPI) bucket() []byte {
	if a.group {
		return bktGroups
	}
	return bktEnrollments
}

// checkID fills in the body's ID from the path, or refuses a different one.
func (a *enrollmentsAPI) checkID(e *Enrollment, id string) *requestError {
	if a.group {
		if e.EnrollmentGroupID == "" {
			e.EnrollmentGroupID = id
		}
		if e.EnrollmentGroupID != id {
			return invalid("enrollmentGroupId %q does not match the path %q", e.EnrollmentGroupID, id)
		}
		return nil
	}
	if e.RegistrationID == "" {
		e.RegistrationID = id
	}
	if !strings.EqualFold(e.RegistrationID, id) {
		return invalid("registrationId %q does not match the path %q", e.RegistrationID, id)
	}
	return nil
}

func (a *enrollmentsAPI) put(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var e Enrollment
	if !readJSON(w, r, &e) {
		return
	}
	if err := a.checkID(&e, id); err != nil {
		writeReqErr(w, err)
		return
	}
	if err := e.prepare(); err != nil {
		writeErr(w, 400, 400004, "%v", err)
		return
	}
	a.reg.mu.Lock()
	old := a.all()[a.key(id)]
	if m := r.Header.Get("If-Match"); m != "" && m != "*" && (old == nil || strings.Trim(m, `"`) != old.Etag) {
		a.reg.mu.Unlock()
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
	a.all()[a.key(id)] = &e
	eb := mustJSON(&e)
	var out Enrollment
	_ = json.Unmarshal(eb, &out)
	a.reg.mu.Unlock()
	if err := a.reg.db.putRaw(a.bucket(), out.key(), eb); err != nil {
		writeErr(w, 500, 500001, "storage: %v", err)
		return
	}
	status := 200
	if old == nil {
		status = 201
	}
	writeJSON(w, status, &out)
}

func (a *enrollmentsAPI) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.reg.mu.Lock()
	e := a.all()[a.key(id)]
	var b []byte
	if e != nil {
		b = mustJSON(e)
	}
	a.reg.mu.Unlock()
	if e == nil {
		writeErr(w, 404, 404201, "Enrollment %q not found.", id)
		return
	}
	writeRaw(w, b)
}

func (a *enrollmentsAPI) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	a.reg.mu.Lock()
	old := a.all()[a.key(id)]
	delete(a.all(), a.key(id))
	a.reg.mu.Unlock()
	if old == nil {
		writeErr(w, 404, 404201, "Enrollment %q not found.", id)
		return
	}
	_ = a.reg.db.del(a.bucket(), old.key())
	w.WriteHeader(204)
}

func (a *enrollmentsAPI) list(w http.ResponseWriter, r *http.Request) {
	a.reg.mu.Lock()
	out := []Enrollment{}
	for _, e := range a.all() {
		var cp Enrollment
		_ = json.Unmarshal(mustJSON(e), &cp)
		out = append(out, cp)
	}
	a.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	writeJSON(w, 200, out)
}

// setStatus serves POST /sim/enrollment…/{id}/disable|enable.
func (a *enrollmentsAPI) setStatus(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), statusAction(w, r)
	if action == "" {
		return
	}
	a.reg.mu.Lock()
	e := a.all()[a.key(id)]
	if e == nil {
		a.reg.mu.Unlock()
		writeErr(w, 404, 404201, "Enrollment %q not found.", id)
		return
	}
	e.ProvisioningStatus = action + "d"
	e.Etag = newEtag()
	e.LastUpdatedDateTimeUtc = nowUTC()
	cp := mustJSON(e)
	key := e.key()
	a.reg.mu.Unlock()
	_ = a.reg.db.putRaw(a.bucket(), key, cp)
	writeRaw(w, cp)
}
