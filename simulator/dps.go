package simulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Extended DPS error codes. 401002, 400208 and 400209 are seen on the
// real service; the others follow its status*1000+n pattern, which is
// not confirmed for them.
const (
	errBadRequest       = 400004
	errNoHub            = 400208
	errHubUnauthorized  = 400209
	errUnauthorized     = 401002
	errNotFound         = 404002
	errThrottled        = 429001
	errInternal         = 500001
	dpsMaxMessageBytes  = 96 * 1024
	csrAPIVersion       = "2025-07-01-preview"
	dpsResponseTopicFmt = "$dps/registrations/res/%d/?$rid=%s"
)

// dpsService is the DPS device endpoint: CONNECT authentication,
// register and operation-status polls, enrollment matching and hub
// allocation. A completed assignment creates the hub device in the
// registry, which the hub service then authenticates against.
type dpsService struct {
	cfg    Config // AssigningPolls, RetryAfter, PollLimit, PollWindow, IDScope, Switches
	log    *slog.Logger
	reg    *registry
	faults *faultSet
	issuer *issuer

	mu       sync.Mutex
	pollHist map[string][]time.Time // by lower-case registration ID
	regHist  []time.Time            // register requests in the last minute (RegistrationsPerMinute)
}

// dpsErr is an answer on the DPS response topic with an error body.
type dpsErr struct {
	status, code int
	msg          string
	retryAfter   int // seconds; 0 = no retry-after
}

func badRequest(msg string) *dpsErr   { return &dpsErr{status: 400, code: errBadRequest, msg: msg} }
func unauthorized(msg string) *dpsErr { return &dpsErr{status: 401, code: errUnauthorized, msg: msg} }

var errStorage = &dpsErr{status: 500, code: errInternal, msg: "Storage failure."}

type registerBody struct {
	RegistrationID *string         `json:"registrationId"`
	Payload        json.RawMessage `json:"payload"`
	CSR            *string         `json:"csr"`
}

type operationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *RegistrationState `json:"registrationState,omitempty"`
}

// apiVersionOK reports whether api-version v is accepted: one of list,
// a draft when DraftAPIVersions is set, or anything with lenient APIVersions.
func apiVersionOK(sw Switches, v string, list []string) bool {
	if sw.APIVersions == "lenient" {
		return true
	}
	if slices.Contains(list, v) {
		return true
	}
	return sw.DraftAPIVersions && slices.Contains(DPSDraftAPIVersions, v)
}

// auth checks a DPS CONNECT. An ID mismatch refuses the CONNECT, or with
// DPSIDMismatch "register" is remembered and answered 401 on register.
func (d *dpsService) auth(c *conn, pk packets.Packet) error {
	if pk.ProtocolVersion != 4 {
		return fmt.Errorf("MQTT protocol level %d; DPS speaks 3.1.1 (level 4)", pk.ProtocolVersion)
	}
	u, err := ParseDPSUsername(string(pk.Connect.Username))
	if err != nil {
		return err
	}
	if !strings.EqualFold(u.IDScope, d.cfg.IDScope) {
		return fmt.Errorf("id scope %q is not this DPS (%s)", u.IDScope, d.cfg.IDScope)
	}
	if !apiVersionOK(d.cfg.Switches, u.APIVersion, DPSAPIVersions) {
		return fmt.Errorf("api-version %q is not supported", u.APIVersion)
	}
	if len(pk.Connect.Password) > 0 {
		return errors.New("password given with X.509 authentication")
	}
	c.apiVer = u.APIVersion
	var mismatch string
	switch {
	case !strings.EqualFold(pk.Connect.ClientIdentifier, u.RegistrationID):
		mismatch = fmt.Sprintf("client id %q differs from username registration id %q", pk.Connect.ClientIdentifier, u.RegistrationID)
	case !strings.EqualFold(c.leaf.Subject.CommonName, u.RegistrationID):
		mismatch = fmt.Sprintf("certificate CN %q differs from registration id %q", c.leaf.Subject.CommonName, u.RegistrationID)
	}
	if mismatch != "" {
		if d.cfg.Switches.DPSIDMismatch != "register" {
			return errors.New(mismatch)
		}
		c.denyCode, c.denyMsg = errUnauthorized, mismatch
	}
	c.id = u.RegistrationID
	return nil
}

// reply publishes a DPS response to one client; retryAfter < 0 omits
// retry-after.
func (d *dpsService) reply(cl *mqtt.Client, c *conn, status int, rid string, retryAfter int, body any) {
	topic := fmt.Sprintf(dpsResponseTopicFmt, status, rid)
	if retryAfter >= 0 {
		topic += fmt.Sprintf("&retry-after=%d", retryAfter)
	}
	b, err := json.Marshal(body)
	if err != nil {
		d.log.Error("DPS: marshal reply", "err", err)
		return
	}
	qos, ok := subscribedQoS(cl, "$dps/registrations/res/#")
	if !ok {
		d.log.Info("DPS: client not subscribed to $dps/registrations/res/#; reply dropped", "client", c.id)
		return
	}
	if d.cfg.Switches.DPSResponseQoS == "0" {
		qos = 0
	}
	if _, err := sendTo(cl, topic, b, qos); err != nil {
		d.log.Debug("DPS: reply not sent", "client", c.id, "err", err)
	}
}

// fail answers with an error body; retry-after only when throttling.
func (d *dpsService) fail(cl *mqtt.Client, c *conn, rid string, e *dpsErr) {
	eb := errorBody(e.code, e.msg)
	switch d.cfg.Switches.DPSErrorMessageField {
	case "errorMessage":
		eb.Message, eb.ErrorMessage = "", e.msg
	case "both":
		eb.ErrorMessage = e.msg
	}
	d.log.Info("DPS: error reply", "client", c.id, "status", e.status, "errorCode", e.code, "message", e.msg)
	retryAfter := e.retryAfter
	if retryAfter == 0 {
		retryAfter = -1
	}
	d.reply(cl, c, e.status, rid, retryAfter, eb)
}

// handle answers a register or poll, after any injected delay.
func (d *dpsService) handle(cl *mqtt.Client, c *conn, t Topic, body []byte) {
	op := "register"
	if t.Kind == TopicDPSPoll {
		op = "poll"
	}
	d.faults.after(d.log, c.role, c.id, op, func() {
		if e := d.serve(cl, c, t, op, body); e != nil {
			d.fail(cl, c, t.RID, e)
		}
	})
}

func (d *dpsService) serve(cl *mqtt.Client, c *conn, t Topic, op string, body []byte) *dpsErr {
	if st, ra := d.faults.status(c.role, c.id, op); st != 0 {
		return &dpsErr{status: st, code: st*1000 + 1, msg: "Injected fault.", retryAfter: ra}
	}
	if t.Kind == TopicDPSRegister {
		if wait := d.registerThrottled(); wait > 0 {
			return &dpsErr{status: 429, code: errThrottled, msg: "Too many registrations for this service.", retryAfter: wait}
		}
	}
	if len(body) > dpsMaxMessageBytes {
		return badRequest("Request body exceeds the maximum message size.")
	}
	if c.denyCode != 0 {
		return &dpsErr{status: 401, code: c.denyCode, msg: "Unauthorized: " + c.denyMsg}
	}
	if t.Kind == TopicDPSRegister {
		return d.register(cl, c, t, body)
	}
	return d.poll(cl, c, t)
}

// registerThrottled applies --registrations-per-minute; it returns the
// seconds to wait, or 0 when the request may proceed.
func (d *dpsService) registerThrottled() int {
	n := d.cfg.Switches.RegistrationsPerMinute
	if n <= 0 {
		return 0
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	i := 0
	for i < len(d.regHist) && now.Sub(d.regHist[i]) >= time.Minute {
		i++
	}
	d.regHist = d.regHist[i:]
	if len(d.regHist) >= n {
		return int(d.regHist[0].Add(time.Minute).Sub(now)/time.Second) + 1
	}
	d.regHist = append(d.regHist, now)
	return 0
}

// pollThrottled applies the per-device poll limit; it returns the
// seconds to wait, or 0 when the poll may proceed (and counts it).
func (d *dpsService) pollThrottled(key string) int {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	hist := d.pollHist[key]
	cut := now.Add(-d.cfg.PollWindow)
	i := 0
	for i < len(hist) && hist[i].Before(cut) {
		i++
	}
	hist = hist[i:]
	if d.cfg.PollLimit > 0 && len(hist) >= d.cfg.PollLimit {
		d.pollHist[key] = hist
		return int(hist[0].Add(d.cfg.PollWindow).Sub(now)/time.Second) + 1
	}
	d.pollHist[key] = append(hist, now)
	return 0
}

// decodeRegister parses and checks a register body for registration id.
// An empty or whitespace body stands for {"registrationId": id} unless
// emptyBody is "reject" (docs/simulator.md, Switches).
func decodeRegister(body []byte, id, emptyBody string) (registerBody, *dpsErr) {
	var rb registerBody
	if len(bytes.TrimSpace(body)) == 0 && emptyBody == "accept" {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&rb); err != nil {
		return rb, badRequest("Request body is not valid JSON: " + err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return rb, badRequest("Request body has data after the JSON object.")
	}
	if err := ValidRegistrationID(id); err != nil {
		return rb, badRequest(err.Error() + ".")
	}
	if rb.RegistrationID != nil && !strings.EqualFold(*rb.RegistrationID, id) {
		return rb, badRequest(fmt.Sprintf("registrationId %q in the body does not match %q.", *rb.RegistrationID, id))
	}
	if len(rb.Payload) > 0 {
		var v any
		_ = json.Unmarshal(rb.Payload, &v)
		if v == nil {
			rb.Payload = nil
		} else if _, ok := v.(map[string]any); !ok {
			return rb, badRequest("payload must be a JSON object.")
		}
	}
	return rb, nil
}

// attest checks the device certificate (validity, revocation) and finds
// its enrollment.
func (d *dpsService) attest(c *conn) (*Enrollment, *dpsErr) {
	now := time.Now()
	if now.Before(c.leaf.NotBefore) || now.After(c.leaf.NotAfter) {
		return nil, unauthorized("Invalid certificate: outside its validity period.")
	}
	if d.reg.isRevoked(c.chain) {
		return nil, unauthorized("Invalid certificate: revoked.")
	}
	enr := d.reg.matchEnrollment(c.id, c.chain)
	if enr == nil {
		return nil, unauthorized("Invalid certificate.")
	}
	return enr, nil
}

// register starts a registration operation and answers 202 "assigning".
func (d *dpsService) register(cl *mqtt.Client, c *conn, t Topic, body []byte) *dpsErr {
	rb, e := decodeRegister(body, c.id, d.cfg.Switches.EmptyRegisterBody)
	if e != nil {
		return e
	}
	enr, e := d.attest(c)
	if e != nil {
		return e
	}
	key := strings.ToLower(c.id)
	d.reg.mu.Lock()
	prev := d.reg.regs[key]
	regDisabled := prev != nil && prev.Disabled
	d.reg.mu.Unlock()
	disabled := !enr.enabled() || regDisabled
	if disabled && d.cfg.Switches.DisabledEnrollment == "401" {
		return unauthorized("Enrollment or registration is disabled.")
	}
	r := newOperation(prev, enr, c, d.cfg.AssigningPolls)
	if disabled {
		r.PendingStatus = "disabled"
	} else {
		d.allocate(r, prev, enr, c, rb)
	}
	if e := d.issueForRegistration(r, rb, c, enr); e != nil {
		return e
	}
	d.reg.mu.Lock()
	d.reg.regs[key] = r
	b := mustJSON(r)
	d.reg.mu.Unlock()
	if err := d.reg.db.putRaw(bktRegs, key, b); err != nil {
		return errStorage
	}
	d.reply(cl, c, 202, t.RID, d.cfg.RetryAfter, operationStatus{OperationID: r.OperationID, Status: "assigning"})
	return nil
}

// newOperation starts a registration operation from the device's
// previous record (if any).
func newOperation(prev *Registration, enr *Enrollment, c *conn, polls int) *Registration {
	r := &Registration{OperationID: newOperationID(), PollsLeft: polls}
	if prev != nil {
		r.State = prev.State
		r.HubHistory = prev.HubHistory
		r.Disabled = prev.Disabled
	} else {
		r.State.CreatedDateTimeUtc = nowUTC()
	}
	r.State.RegistrationID = c.id
	r.State.Status = "assigning"
	r.State.ErrorCode, r.State.ErrorMessage = 0, ""
	r.State.LastUpdatedDateTimeUtc = nowUTC()
	r.State.Etag = newEtag()
	r.State.Payload = nil
	r.State.IssuedCertificateChain = nil
	if enr.isGroup() {
		r.State.X509 = &RegistrationX509{EnrollmentGroupID: enr.EnrollmentGroupID}
	} else {
		r.State.X509 = &RegistrationX509{}
	}
	r.LeafSHA1, r.LeafSHA256 = Thumbprints(c.leaf)
	return r
}

// issueForRegistration signs the register body's csr for an assigned
// device (api-version 2025-07-01-preview and the drafts); with an older
// api-version the csr is ignored or, with CSROldAPI "reject", refused;
// likewise, per CSRWithoutPolicy, for an enrollment without a credential
// policy.
func (d *dpsService) issueForRegistration(r *Registration, rb registerBody, c *conn, enr *Enrollment) *dpsErr {
	if rb.CSR == nil || r.PendingStatus != "assigned" {
		return nil
	}
	if c.apiVer != csrAPIVersion && !slices.Contains(DPSDraftAPIVersions, c.apiVer) {
		if d.cfg.Switches.CSROldAPI == "reject" {
			return badRequest("csr requires api-version " + csrAPIVersion + ".")
		}
		return nil
	}
	if enr.CredentialPolicy == "" {
		// Azure issues only through an enrollment's credential policy;
		// what it answers to a csr without one is not documented.
		if d.cfg.Switches.CSRWithoutPolicy == "reject" {
			return badRequest("The enrollment has no credential policy: certificate issuance is not enabled for it.")
		}
		return nil
	}
	chain, err := d.issuer.fromCSR(*rb.CSR, c.id, enr.IssuedCertificateValidityDays)
	if err != nil {
		return badRequest("Invalid csr: " + err.Error())
	}
	r.IssuedChain = chain
	return nil
}

// poll answers an operation-status request: 202 while "assigning" polls
// remain, then the result (completing the assignment on the first read).
func (d *dpsService) poll(cl *mqtt.Client, c *conn, t Topic) *dpsErr {
	key := strings.ToLower(c.id)
	if wait := d.pollThrottled(key); wait > 0 {
		return &dpsErr{status: 429, code: errThrottled, msg: "Too many operation status requests.", retryAfter: wait}
	}
	d.reg.mu.Lock()
	r := d.reg.regs[key]
	if r == nil || r.OperationID != t.OperationID {
		d.reg.mu.Unlock()
		return &dpsErr{status: 404, code: errNotFound, msg: "Operation not found."}
	}
	if r.State.Status == "assigning" && r.PollsLeft > 0 {
		r.PollsLeft--
		st := RegistrationState{RegistrationID: r.State.RegistrationID, Status: "assigning"}
		// Not persisted: after a restart the device merely polls once more.
		d.reg.mu.Unlock()
		d.reply(cl, c, 202, t.RID, d.cfg.RetryAfter, operationStatus{OperationID: r.OperationID, Status: "assigning", RegistrationState: &st})
		return nil
	}
	var writes []write
	if r.State.Status == "assigning" {
		writes = d.completeLocked(r)
	}
	st := r.State
	st.IssuedCertificateChain = r.IssuedChain
	if p := d.cfg.Switches.ConnectionProfile; p != "" && st.Status == "assigned" && (c.apiVer == "2026-11-02-preview" || c.apiVer == "2026-11-15-preview") {
		st.ConnectionProfile = p
	}
	opID := r.OperationID
	writes = append(writes, write{bkt: bktRegs, key: key, val: mustJSON(r)})
	d.reg.mu.Unlock()
	if err := d.reg.flush(writes); err != nil {
		return errStorage
	}
	status := 200
	if st.Status == "failed" && d.cfg.Switches.FailedTopicStatus != 0 {
		status = d.cfg.Switches.FailedTopicStatus
	}
	d.reply(cl, c, status, t.RID, -1, operationStatus{OperationID: opID, Status: st.Status, RegistrationState: &st})
	return nil
}
