package line

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"devid/enroll/station/ca"
)

//go:embed web
var webFS embed.FS

// Handler serves the station's web page (/), its live state as
// server-sent events (/events: one "state" event with the whole Snapshot
// at once and after every change), the state as JSON (/api/state), the
// ledger search (/api/ledger?q=DEVICE-ID-OR-SERIAL) and /metrics.
func (s *Station) Handler() http.Handler {
	mux := http.NewServeMux()
	sub, _ := fs.Sub(webFS, "web")
	mux.Handle("GET /", http.FileServerFS(sub))
	mux.HandleFunc("GET /events", s.serveEvents)
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Snapshot())
	})
	mux.HandleFunc("GET /api/ledger", s.serveLedger)
	mux.Handle("GET /metrics", s.metrics.Handler())
	return mux
}

// broadcast sends the current snapshot to every event stream; a stream
// that is behind misses this one (the next carries the whole state).
func (s *Station) broadcast() {
	s.mu.Lock()
	n := len(s.subs)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	b, err := json.Marshal(s.Snapshot())
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.subs {
		select {
		case c <- b:
		default:
		}
	}
}

func (s *Station) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	c := make(chan []byte, 16)
	s.mu.Lock()
	s.subs[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, c)
		s.mu.Unlock()
	}()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	first, _ := json.Marshal(s.Snapshot())
	fmt.Fprintf(w, "retry: 1000\nevent: state\ndata: %s\n\n", first)
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-c:
			fmt.Fprintf(w, "event: state\ndata: %s\n\n", b)
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		}
		fl.Flush()
	}
}

// LedgerResult is the answer to a ledger search.
type LedgerResult struct {
	Query string `json:"query"`
	// DeviceID is the device searched (the query, or the device a
	// serial this station issued belongs to).
	DeviceID string      `json:"device_id"`
	Issued   []ca.Record `json:"issued"`
	Refused  []ca.Record `json:"refused"`
	Error    string      `json:"error,omitempty"`
}

// SerialLookup is a Ledger that can find the record of any serial; without
// it, a serial search finds the serials this station issued since it
// started.
type SerialLookup interface {
	IssuedSerial(serial string) (*ca.Record, error)
}

// isHex reports whether q is hexadecimal digits only (a serial, with or
// without its leading zero).
func isHex(q string) bool {
	for _, c := range q {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return q != ""
}

func (s *Station) serveLedger(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	res := LedgerResult{Query: q, Issued: []ca.Record{}, Refused: []ca.Record{}}
	status := http.StatusOK
	switch {
	case s.o.Ledger == nil:
		res.Error, status = "this station has no ledger to search", http.StatusNotImplemented
	case q == "" || len(q) > 128:
		res.Error, status = "give a device ID or a certificate serial (hex) in q, at most 128 characters", http.StatusBadRequest
	default:
		id := q
		if isHex(q) && len(q) >= 16 {
			// A serial: which device is it?
			if sl, ok := s.o.Ledger.(SerialLookup); ok {
				if rec, err := sl.IssuedSerial(strings.ToLower(q)); err == nil && rec != nil {
					id = rec.DeviceID
				}
			} else {
				s.mu.Lock()
				if d, ok := s.serials[strings.ToLower(q)]; ok {
					id = d
				}
				s.mu.Unlock()
			}
		}
		res.DeviceID = id
		iss, err := s.o.Ledger.Issued(id)
		if err == nil {
			var ref []ca.Record
			ref, err = s.o.Ledger.Refused(id)
			res.Refused = append(res.Refused, ref...)
		}
		res.Issued = append(res.Issued, iss...)
		if err != nil {
			res.Error, status = "ledger: "+err.Error(), http.StatusInternalServerError
		}
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(res)
}
