package simulator

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"devid/simulator/est"
)

// The control plane (docs/simulator.md, "Control plane") is HTTP+JSON on
// loopback: the Azure-shaped DPS and hub service APIs plus /sim
// extensions. Each resource is a small type in its own control_*.go file
// that registers its routes; they share the registry and the services.

// startHTTP starts the control plane and the EST server.
func (s *Sim) startHTTP() error {
	// Loopback only: without --control-token-file the control plane has
	// no authentication (guardControl keeps browsers out).
	if h, _, err := net.SplitHostPort(s.cfg.ControlAddr); err != nil {
		return fmt.Errorf("control address %q: %w", s.cfg.ControlAddr, err)
	} else if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("control address %q: must be a loopback address (the control plane has no authentication)", s.cfg.ControlAddr)
	}
	l, err := s.listen(s.cfg.ControlAddr, false)
	if err != nil {
		return fmt.Errorf("control listener %s: %w", s.cfg.ControlAddr, err)
	}
	s.ready.ControlURL = "http://" + l.Addr().String()
	s.ready.CRLURL = s.ready.ControlURL + "/crl/issuing.crl"
	s.ready.ControlTokenFile = s.cfg.ControlTokenFile
	srv := &http.Server{Handler: s.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	s.httpSrvs = append(s.httpSrvs, srv)
	go srv.Serve(l)

	el, err := s.listen(s.cfg.ESTAddr, false)
	if err != nil {
		return fmt.Errorf("EST listener %s: %w", s.cfg.ESTAddr, err)
	}
	s.ready.ESTURL = "https://" + el.Addr().String()
	etls := s.tlsConfig("1.3", false)
	// Who may enroll over EST: certificates chaining to the issuing CA
	// (re-enrollment), to an enrollment group's CA, or to --est-client-ca.
	etls.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := etls.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = s.estClientCAs()
		return c, nil
	}
	esrv := &http.Server{Handler: s.estHandler(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: etls}
	s.httpSrvs = append(s.httpSrvs, esrv)
	go esrv.Serve(tls.NewListener(el, esrv.TLSConfig))

	dir := s.cfg.StateDir
	s.ready.ServerCA = filepath.Join(dir, fileServerRoot)
	s.ready.IssuingCA = filepath.Join(dir, fileIssuingRoot)
	s.ready.IssuingChain = filepath.Join(dir, fileIssuingChain)
	s.ready.StateDir = dir
	return nil
}

// estHandler is the EST server of simulator/est, signing with the
// issuing CA.
func (s *Sim) estHandler() http.Handler {
	h, err := est.New(est.Config{
		Issuer:   s.PKI.IssuingCA,
		Key:      s.PKI.IssuingKey,
		CACerts:  s.PKI.IssuingChain(),
		Validity: s.cfg.IssuedValidity,
	})
	if err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "EST: "+err.Error(), http.StatusInternalServerError)
		})
	}
	return h
}

// estClientCAs are the CAs whose certificates may enroll over EST.
func (s *Sim) estClientCAs() *x509.CertPool {
	p := certPool(append([]*x509.Certificate{s.PKI.IssuingRoot, s.PKI.IssuingCA}, s.cfg.ESTClientCAs...))
	for _, c := range s.reg.groupCAs() {
		p.AddCert(c)
	}
	return p
}

// controlHandler assembles every control-plane resource.
func (s *Sim) controlHandler() http.Handler {
	mux := http.NewServeMux()
	rev := &revoker{reg: s.reg, conns: s.conns, pki: s.PKI}
	for _, api := range []interface{ routes(*http.ServeMux) }{
		// DPS service API.
		&enrollmentsAPI{reg: s.reg, group: true},
		&enrollmentsAPI{reg: s.reg, group: false},
		&registrationsAPI{reg: s.reg},
		// Hub service API; /hubs/{hub}/... selects a hub explicitly.
		&devicesAPI{reg: s.reg},
		&twinsAPI{reg: s.reg, hub: s.hub, faults: s.faults},
		&c2dAPI{reg: s.reg, hub: s.hub},
		// Simulator extensions.
		&simAPI{ready: &s.ready},
		&hubsAPI{reg: s.reg},
		&revocationsAPI{rev: rev},
		&telemetryAPI{reg: s.reg, tel: s.tel, closed: &s.closed},
		&faultsAPI{faults: s.faults, conns: s.conns},
		&connectionsAPI{conns: s.conns},
	} {
		api.routes(mux)
	}
	serviceHost := func(host string) bool {
		return strings.EqualFold(host, s.cfg.DPSHost) || s.reg.hubByHost(host) != nil
	}
	return recoverHTTP(s, guardControl(s.cfg.ControlToken, serviceHost, mux))
}

// hubRoutes registers pattern both bare and under /hubs/{hub}.
func hubRoutes(mux *http.ServeMux, method, path string, h http.HandlerFunc) {
	mux.HandleFunc(method+" "+path, h)
	mux.HandleFunc(method+" /hubs/{hub}"+path, h)
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	if v != nil {
		_ = json.NewEncoder(w).Encode(v)
	}
}

// writeRaw writes an already-marshalled JSON body with status 200.
func writeRaw(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(b)
}

func writeErr(w http.ResponseWriter, status int, code int, format string, a ...any) {
	eb := errorBody(code, fmt.Sprintf(format, a...))
	w.Header().Set("x-ms-error-code", strconv.Itoa(code))
	writeJSON(w, status, eb)
}

// writeReqErr writes a refused request.
func writeReqErr(w http.ResponseWriter, e *requestError) {
	writeErr(w, e.status, e.code, "%s", e.msg)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	if err := dec.Decode(v); err != nil {
		writeErr(w, 400, 400004, "request body is not valid JSON: %v", err)
		return false
	}
	return true
}

// statusAction reads the {action} of the /sim disable|enable calls; on
// anything else it writes a 404 and returns "".
func statusAction(w http.ResponseWriter, r *http.Request) string {
	action := r.PathValue("action")
	if action != "disable" && action != "enable" {
		writeErr(w, 404, 404000, "unknown action %q (disable|enable)", action)
		return ""
	}
	return action
}

// hubFor selects the hub of a hub-API request: /hubs/{hub}/ prefix, else
// a Host header equal to a hub host name, else the first hub. An unknown
// {hub} gets a 404 written to w and a nil result.
func hubFor(reg *registry, w http.ResponseWriter, r *http.Request) *HubConfig {
	if n := r.PathValue("hub"); n != "" {
		h := reg.namedHub(n)
		if h == nil {
			writeErr(w, 404, 404000, "unknown hub %q", n)
		}
		return h
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if h := reg.hubByHost(host); h != nil {
		return h
	}
	return reg.hubs[0]
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
