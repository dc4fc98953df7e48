package simulator

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"devid/simulator/simapi"
)

// telemetryAPI serves recorded telemetry: GET /sim/telemetry (a long poll
// with wait and min) and DELETE /sim/telemetry.
type telemetryAPI struct {
	reg    *registry
	tel    *telemetryLog
	closed *atomic.Bool // the simulator is shutting down: answer waiting polls
}

func (a *telemetryAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sim/telemetry", a.get)
	mux.HandleFunc("DELETE /sim/telemetry", func(w http.ResponseWriter, r *http.Request) {
		if err := a.tel.clear(); err != nil {
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		w.WriteHeader(204)
	})
}

// telemetryQuery is a parsed GET /sim/telemetry.
type telemetryQuery struct {
	after      uint64
	limit, min int
	wait       time.Duration
	hub, dev   string
}

func intAtLeast(lo int) func(string) (int, bool) {
	return func(v string) (int, bool) {
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= lo
	}
}

// parseTelemetryQuery reads the query; on a bad parameter it writes a 400
// and returns false.
func parseTelemetryQuery(w http.ResponseWriter, q url.Values) (telemetryQuery, bool) {
	tq := telemetryQuery{hub: q.Get("hub"), dev: q.Get("deviceId")}
	var ok bool
	if tq.after, ok = queryParam(w, q, "after", "a non-negative integer", uint64(0), func(v string) (uint64, bool) {
		n, err := strconv.ParseUint(v, 10, 64)
		return n, err == nil
	}); !ok {
		return tq, false
	}
	if tq.limit, ok = queryParam(w, q, "limit", "a positive integer", 1000, intAtLeast(1)); !ok {
		return tq, false
	}
	if tq.min, ok = queryParam(w, q, "min", "a non-negative integer", 1, intAtLeast(0)); !ok {
		return tq, false
	}
	tq.wait, ok = queryParam(w, q, "wait", "a duration up to 5m, e.g. 10s", time.Duration(0), func(v string) (time.Duration, bool) {
		d, err := time.ParseDuration(v)
		return d, err == nil && d >= 0 && d <= 5*time.Minute
	})
	return tq, ok
}

func (a *telemetryAPI) get(w http.ResponseWriter, r *http.Request) {
	tq, ok := parseTelemetryQuery(w, r.URL.Query())
	if !ok {
		return
	}
	match := func(t *simapi.TelemetryRecord) bool {
		return (tq.hub == "" || t.Hub == tq.hub || strings.EqualFold(tq.hub, a.reg.hostOf(t.Hub))) && (tq.dev == "" || t.DeviceID == tq.dev)
	}
	deadline := time.Now().Add(tq.wait)
	for {
		recs, err := a.tel.query(tq.after, tq.limit, match)
		if err != nil {
			writeErr(w, 500, 500001, "%v", err)
			return
		}
		if len(recs) >= tq.min || !time.Now().Before(deadline) || a.closed.Load() {
			if recs == nil {
				recs = []simapi.TelemetryRecord{}
			}
			writeJSON(w, 200, recs)
			return
		}
		a.tel.wait(r.Context(), time.Until(deadline))
	}
}
