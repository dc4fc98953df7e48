package simulator

import (
	"crypto/subtle"
	"mime"
	"net"
	"net/http"
	"strings"
)

// guardControl refuses control-plane requests that a web page in the
// developer's browser could make. Listening on loopback is not enough: a
// page can POST to 127.0.0.1 without a preflight when the body is
// text/plain, a form or absent ("simple" requests), and a DNS-rebinding
// page reaches it under its own host name. So every request must name a
// loopback Host, or one of the simulator's own service names (the DPS
// host or a hub host, which select a hub as on Azure); a page can only
// send those from an origin that resolves to them, which rebinding cannot
// forge. Every request that may
// change something must be application/json (which a page cannot send
// cross-origin without a CORS preflight, which is never granted). With a
// token (--control-token-file) every request also needs
// "Authorization: Bearer TOKEN", except the CRL, which is public.
func guardControl(token string, serviceHost func(string) bool, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if host := hostOnly(r.Host); !loopbackHost(host) && !serviceHost(host) {
			writeErr(w, http.StatusForbidden, 403001, "Host %q is neither a loopback name (127.0.0.1, [::1], localhost) nor a DPS or hub host of this simulator", r.Host)
			return
		}
		if token != "" && !(r.Method == http.MethodGet && r.URL.Path == "/crl/issuing.crl") {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="devid-sim"`)
				writeErr(w, http.StatusUnauthorized, 401001, "the control plane needs \"Authorization: Bearer TOKEN\" with the token of --control-token-file")
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				writeErr(w, http.StatusUnsupportedMediaType, 415001, "%s needs Content-Type application/json (got %q)", r.Method, r.Header.Get("Content-Type"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// hostOnly is the host of a Host header (host or host:port), without
// IPv6 brackets.
func hostOnly(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// loopbackHost says whether host names this machine's loopback:
// localhost, 127.0.0.0/8 or ::1.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
