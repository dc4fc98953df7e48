package simulator

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"

	"devid/simulator/simapi"
)

// revokedCert is one revocation (GET /sim/revoked lists them).
type revokedCert struct {
	SHA256    string `json:"sha256"` // the revocation key: thumbprint, "serial:…" or "crl:…"
	Serial    string `json:"serial"` // hex
	Issuer    string `json:"issuer"`
	Subject   string `json:"subject"`
	RevokedAt string `json:"revokedAt"`
	IssuedBy  bool   `json:"issuedBySim"`        // issued by the simulator's issuing CA (listed in the CRL)
	IssuerCA  string `json:"issuerCA,omitempty"` // base64 DER of the CA that signed the CRL (revoke only what it issued)
}

// isRevoked reports whether any certificate of chain was revoked through
// the control plane.
func (r *registry) isRevoked(chain []*x509.Certificate) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range chain {
		_, t := Thumbprints(c)
		if _, ok := r.revoked[t]; ok {
			return true
		}
		for _, rc := range r.revoked {
			if rc.matchesSerial(c) {
				return true
			}
		}
	}
	return false
}

// groupCAs returns the signing certificates of every enrollment group.
func (r *registry) groupCAs() []*x509.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*x509.Certificate
	for _, g := range r.groups {
		out = append(out, g.certs...)
	}
	return out
}

// revoker turns revocation requests into entries of the registry, closes
// the connections they hit and publishes the issuing CA's CRL. DPS answers
// 401002 and hubs CONNACK 5 for any chain containing a revoked certificate.
type revoker struct {
	reg   *registry
	conns *connTable
	pki   *PKI
}

// requestError is a refused control-plane request: HTTP status, Azure
// error code and message.
type requestError struct {
	status, code int
	msg          string
}

func (e *requestError) Error() string { return e.msg }

func invalid(format string, a ...any) *requestError {
	return &requestError{status: 400, code: 400004, msg: fmt.Sprintf(format, a...)}
}

// entries builds the revocations a request names.
func (v *revoker) entries(in simapi.RevokeRequest) ([]revokedCert, *requestError) {
	now := nowUTC()
	switch {
	case in.CRL != "":
		entries, err := v.crlEntries(in.CRL, in.Chain)
		if err != nil {
			return nil, invalid("%v", err)
		}
		return entries, nil
	case in.Certificate != "":
		certs, err := ParsePEMCerts([]byte(in.Certificate))
		if err != nil {
			return nil, invalid("certificate: %v", err)
		}
		c := certs[0]
		_, t := Thumbprints(c)
		return []revokedCert{{SHA256: t, Serial: fmt.Sprintf("%X", c.SerialNumber), Issuer: c.Issuer.String(),
			Subject: c.Subject.String(), RevokedAt: now, IssuedBy: c.CheckSignatureFrom(v.pki.IssuingCA) == nil}}, nil
	case in.Thumbprint != "":
		return []revokedCert{{SHA256: strings.ToUpper(strings.ReplaceAll(in.Thumbprint, ":", "")), RevokedAt: now}}, nil
	case in.Serial != "":
		ser := strings.ToUpper(strings.TrimLeft(strings.ReplaceAll(in.Serial, ":", ""), "0"))
		return []revokedCert{{SHA256: "serial:" + ser + "|" + in.Issuer, Serial: ser, Issuer: in.Issuer, RevokedAt: now,
			IssuedBy: in.Issuer == "" || in.Issuer == v.pki.IssuingCA.Subject.String()}}, nil
	case in.DeviceID != "":
		return v.deviceEntries(in.Hub, in.DeviceID, now)
	}
	return nil, invalid("give crl, certificate, thumbprint, serial or deviceId")
}

// deviceEntries revokes the thumbprints a hub device is registered with.
func (v *revoker) deviceEntries(hub, deviceID, now string) ([]revokedCert, *requestError) {
	h := v.reg.namedHub(hub)
	if h == nil {
		return nil, &requestError{404, 404000, fmt.Sprintf("unknown hub %q", hub)}
	}
	v.reg.mu.Lock()
	defer v.reg.mu.Unlock()
	d := v.reg.devices[deviceKey(h.Name, deviceID)]
	if d == nil {
		return nil, &requestError{404, 404001, fmt.Sprintf("Device %q not found on %s.", deviceID, h.Name)}
	}
	var out []revokedCert
	if tp := d.Device.Authentication.X509Thumbprint; tp != nil {
		for _, t := range []string{tp.PrimaryThumbprint, tp.SecondaryThumbprint} {
			if t != "" {
				out = append(out, revokedCert{SHA256: strings.ToUpper(t), Subject: "CN=" + deviceID, RevokedAt: now})
			}
		}
	}
	return out, nil
}

// revoke records entries, closes the live connections whose leaf they
// revoke and returns how many it closed.
func (v *revoker) revoke(entries []revokedCert) int {
	v.reg.mu.Lock()
	for _, e := range entries {
		v.reg.revoked[e.SHA256] = e
	}
	v.reg.crlNum++
	n := v.reg.crlNum
	kick := v.conns.matching(func(c *conn) bool {
		if c.leaf == nil {
			return false
		}
		t1, t256 := Thumbprints(c.leaf)
		for _, e := range entries {
			if e.SHA256 == t256 || e.SHA256 == t1 || e.matchesSerial(c.leaf) {
				return true
			}
		}
		return false
	})
	v.reg.mu.Unlock()
	for _, e := range entries {
		_ = v.reg.db.put(bktRevoked, e.SHA256, e)
	}
	_ = v.reg.db.putMeta("crlNumber", []byte(strconv.FormatInt(n, 10)))
	for _, cl := range kick {
		cl.Stop(errClosed)
	}
	return len(kick)
}

// list returns every revocation, oldest first.
func (v *revoker) list() []revokedCert {
	v.reg.mu.Lock()
	out := []revokedCert{}
	for _, e := range v.reg.revoked {
		out = append(out, e)
	}
	v.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].RevokedAt < out[j].RevokedAt })
	return out
}

// crl returns the issuing CA's DER CRL of the certificates it issued that
// were revoked.
func (v *revoker) crl() ([]byte, error) {
	v.reg.mu.Lock()
	var entries []x509.RevocationListEntry
	for _, e := range v.reg.revoked {
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
	num := v.reg.crlNum + 1
	v.reg.mu.Unlock()
	return v.pki.CRL(num, entries)
}
