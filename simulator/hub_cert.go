package simulator

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Certificate renewal over the hub is a preview of this api-version only.
const hubCertAPIVersion = "2025-08-01-preview"

// credRequest is the body of $iothub/credentials/POST/issueCertificate.
type credRequest struct {
	ID      string `json:"id"`
	CSR     string `json:"csr"`
	Replace string `json:"replace"`
}

// issueCertificate serves the hub certificate-renewal preview: 202
// {correlationId, operationExpires}, then 200 with the chain, as a bare
// array of base64 DER (SDK) or {"certificates":[PEM...]} (docs), per
// --hub-credentials-response. Answers use the topic spelling the device
// used ("credentials" as the SDKs, "credential" as the docs).
func (h *hubService) issueCertificate(cl *mqtt.Client, c *conn, t Topic, payload []byte) {
	family := "credentials"
	if t.ModuleID == "credential" {
		family = "credential"
	}
	if sw := h.sw.HubCredentialsTopic; sw != "both" && sw != family {
		h.log.Info("hub: closing connection: credentials topic spelling not enabled", "device", c.id, "topic", family)
		cl.Stop(errClosed)
		return
	}
	resFmt := "$iothub/" + family + "/res/%d/?$rid=%s"
	fail := func(status, code int, msg, credErr string) {
		eb := errorBody(code, msg)
		if credErr != "" {
			eb.Info = map[string]string{"credentialError": credErr}
		}
		h.reply(cl, c, resFmt, status, t.RID, eb, "")
	}
	if c.apiVer != hubCertAPIVersion {
		fail(400, 400004, "Certificate issuance needs api-version "+hubCertAPIVersion+".", "")
		return
	}
	if !validCredRID(t.RID) {
		fail(400, 400004, "$rid must be 4-36 characters of letters, digits and '-', not starting or ending with '-'.", "")
		return
	}
	if st, ra := h.faults.status(c.role, c.id, "twin"); st != 0 {
		eb := errorBody(st*1000+2, "Injected fault.")
		eb.RetryAfter = ra
		h.reply(cl, c, resFmt, st, t.RID, eb, "")
		return
	}
	var req credRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		fail(400, 400040, "Request body is not valid JSON.", "")
		return
	}
	if req.ID != c.id {
		fail(400, 400040, fmt.Sprintf("id %q is not the connected device %q.", req.ID, c.id), "")
		return
	}
	key := deviceKey(c.role, c.id)
	now := time.Now()
	h.cmu.Lock()
	active := h.credOps[key]
	if active != nil && !now.Before(active.expires) {
		delete(h.credOps, key) // expired: dropped, like the hub does
		active = nil
	}
	switch {
	case active != nil && req.Replace == "":
		h.cmu.Unlock()
		eb := errorBody(409005, "Another certificate request is active.")
		eb.Info = map[string]string{"requestId": active.rid, "correlationId": active.correlationID, "operationExpires": active.expiresText()}
		h.reply(cl, c, resFmt, 409, t.RID, eb, "")
		return
	case req.Replace != "" && req.Replace != "*" && (active == nil || active.rid != req.Replace):
		h.cmu.Unlock()
		eb := errorBody(412001, fmt.Sprintf("No active certificate request %q to replace.", req.Replace))
		h.reply(cl, c, resFmt, 412, t.RID, eb, "")
		return
	case active != nil: // replace "*" or the active $rid
		active.cancel()
		delete(h.credOps, key)
	}
	h.cmu.Unlock()
	chainB64, err := h.issuer.fromCSR(req.CSR, c.id, 0)
	if err != nil {
		fail(400, 400040, "Invalid csr: "+err.Error(), "FailedToDecodeCsr")
		return
	}
	op := &credOp{rid: t.RID, correlationID: newUUID(), expires: now.Add(credOpLifetime), chain: chainB64}
	complete := func() { h.completeCredential(c.role, c.id, family, op) }
	// An injected delay on op "credentials" holds the 200, so the request
	// stays active (docs/simulator.md, fault injection). It is read before
	// the 202 goes out: a device that has seen the 202 may change faults.
	hold := h.faults.delay(c.role, c.id, "credentials")
	h.cmu.Lock()
	h.credOps[key] = op
	h.cmu.Unlock()
	h.reply(cl, c, resFmt, 202, t.RID, map[string]string{"correlationId": op.correlationID, "operationExpires": op.expiresText()}, "")
	if hold <= 0 {
		complete()
		return
	}
	h.cmu.Lock()
	if !op.cancelled { // not replaced since the 202
		op.timer = time.AfterFunc(hold, complete)
	}
	h.cmu.Unlock()
}

// credOpLifetime is how long a certificate request stays active
// (operationExpires) when it is not completed.
const credOpLifetime = 3 * time.Minute

// credOp is a device's active certificate request. While it is active the
// hub answers another request with 409005 unless it says replace.
type credOp struct {
	rid, correlationID string
	expires            time.Time
	chain              []string    // issued chain, base64 DER, leaf first
	timer              *time.Timer // pending completion, nil when immediate
	cancelled          bool
}

func (o *credOp) expiresText() string { return o.expires.UTC().Format("2006-01-02T15:04:05.000Z") }

// cancel stops a pending completion; the caller holds hubService.cmu.
func (o *credOp) cancel() {
	o.cancelled = true
	if o.timer != nil {
		o.timer.Stop()
	}
}

// completeCredential answers op with 200 and the chain on the device's
// live connection, if it is subscribed, and binds the device to the new
// certificate. A device that is not there keeps getting 409005 until the
// request expires, and the chain is dropped.
func (h *hubService) completeCredential(role, id, family string, op *credOp) {
	key := deviceKey(role, id)
	h.cmu.Lock()
	if op.cancelled || h.credOps[key] != op {
		h.cmu.Unlock()
		return
	}
	h.cmu.Unlock()
	resFmt := "$iothub/" + family + "/res/%d/?$rid=%s"
	topic := fmt.Sprintf(resFmt, 200, op.rid)
	var target *mqtt.Client
	for _, cl := range h.conns.matching(func(c *conn) bool { return c.role == role && c.id == id }) {
		if hasResponseSubscription(cl, topic) {
			target = cl
		}
	}
	if target == nil {
		h.log.Info("hub: certificate request completed but the device is not connected and subscribed; it stays active until it expires", "device", id, "rid", op.rid, "expires", op.expiresText())
		return
	}
	c := h.conns.get(target)
	if err := h.bindIssued(key, op.chain[0]); err != nil {
		h.reply(target, c, resFmt, 500, op.rid, errorBody(500001, "Storage failure."), "")
		return
	}
	h.cmu.Lock()
	if h.credOps[key] == op {
		delete(h.credOps, key)
	}
	h.cmu.Unlock()
	h.reply(target, c, resFmt, 200, op.rid, h.credentialsBody(op.chain), "")
}

// bindIssued binds the device to its new certificate (the old one stays
// as secondary) and trusts the issuing CA for it from now on, like Azure
// Device Registry's credential sync.
func (h *hubService) bindIssued(key, leafB64 string) error {
	der, _ := base64.StdEncoding.DecodeString(leafB64)
	leaf, _ := x509.ParseCertificate(der)
	h.reg.mu.Lock()
	d := h.reg.devices[key]
	if d == nil || leaf == nil {
		h.reg.mu.Unlock()
		return nil
	}
	_, t256 := Thumbprints(leaf)
	d.CAIssued = true
	old := ""
	if d.Device.Authentication.X509Thumbprint != nil {
		old = d.Device.Authentication.X509Thumbprint.PrimaryThumbprint
	}
	d.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: t256, SecondaryThumbprint: old}}
	d.Device.Etag = newEtag()
	b := mustJSON(d)
	h.reg.mu.Unlock()
	return h.reg.db.putRaw(bktDevices, key, b)
}

// credentialsBody is the 200 body for an issued chain (base64 DER, leaf
// first) in the form --hub-credentials-response selects.
func (h *hubService) credentialsBody(chainB64 []string) any {
	if h.sw.HubCredentialsResponse != "object" {
		return chainB64
	}
	var pems []string
	for _, c64 := range chainB64 {
		der, _ := base64.StdEncoding.DecodeString(c64)
		if c, err := x509.ParseCertificate(der); err == nil {
			pems = append(pems, string(pemCert(c)))
		}
	}
	return map[string]any{"certificates": pems}
}

// validCredRID checks the $rid rule of the renewal preview: 4-36
// characters of letters, digits and '-', not starting or ending with '-'.
func validCredRID(r string) bool {
	if len(r) < 4 || len(r) > 36 || r[0] == '-' || r[len(r)-1] == '-' {
		return false
	}
	for _, ch := range r {
		if !(ch == '-' || ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z') {
			return false
		}
	}
	return true
}
