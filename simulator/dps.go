package simulator

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Extended DPS error codes. 401002, 400208 and 400209 are seen on the
// real service; the others follow its status*1000+n pattern [UNCONFIRMED].
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

func (s *Sim) apiVersionOK(v string, list []string) bool {
	if s.cfg.Switches.APIVersions == "lenient" {
		return true
	}
	if slices.Contains(list, v) {
		return true
	}
	return s.cfg.Switches.DraftAPIVersions && slices.Contains(DPSDraftAPIVersions, v)
}

// authDPS checks a DPS CONNECT (reference §2.1).
func (s *Sim) authDPS(c *conn, pk packets.Packet) error {
	if pk.ProtocolVersion != 4 {
		return fmt.Errorf("MQTT protocol level %d; DPS speaks 3.1.1 (level 4)", pk.ProtocolVersion)
	}
	u, err := ParseDPSUsername(string(pk.Connect.Username))
	if err != nil {
		return err
	}
	if !strings.EqualFold(u.IDScope, s.cfg.IDScope) {
		return fmt.Errorf("id scope %q is not this DPS (%s)", u.IDScope, s.cfg.IDScope)
	}
	if !s.apiVersionOK(u.APIVersion, DPSAPIVersions) {
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
		if s.cfg.Switches.DPSIDMismatch != "register" {
			return errors.New(mismatch)
		}
		c.denyCode, c.denyMsg = errUnauthorized, mismatch
	}
	c.id = u.RegistrationID
	return nil
}

// dpsReply publishes a DPS response to one client.
// dpsReply publishes a response; retryAfter < 0 omits retry-after.
func (s *Sim) dpsReply(cl *mqtt.Client, c *conn, status int, rid string, retryAfter int, body any) {
	topic := fmt.Sprintf(dpsResponseTopicFmt, status, rid)
	if retryAfter >= 0 {
		topic += fmt.Sprintf("&retry-after=%d", retryAfter)
	}
	b, err := json.Marshal(body)
	if err != nil {
		s.log.Error("DPS: marshal reply", "err", err)
		return
	}
	qos, ok := subscribedQoS(cl, "$dps/registrations/res/#")
	if !ok {
		s.log.Info("DPS: client not subscribed to $dps/registrations/res/#; reply dropped", "client", c.id)
		return
	}
	if s.cfg.Switches.DPSResponseQoS == "0" {
		qos = 0
	}
	if _, err := s.sendTo(cl, topic, b, qos); err != nil {
		s.log.Debug("DPS: reply not sent", "client", c.id, "err", err)
	}
}

func (s *Sim) dpsError(cl *mqtt.Client, c *conn, rid string, status, code int, msg string, retryAfter int) {
	eb := errorBody(code, msg)
	switch s.cfg.Switches.DPSErrorMessageField {
	case "errorMessage":
		eb.Message, eb.ErrorMessage = "", msg
	case "both":
		eb.ErrorMessage = msg
	}
	s.log.Info("DPS: error reply", "client", c.id, "status", status, "errorCode", code, "message", msg)
	if retryAfter == 0 {
		retryAfter = -1 // errors carry retry-after only when throttling
	}
	s.dpsReply(cl, c, status, rid, retryAfter, eb)
}

func (s *Sim) handleDPS(cl *mqtt.Client, c *conn, t Topic, body []byte) {
	op := "register"
	if t.Kind == TopicDPSPoll {
		op = "poll"
	}
	s.after(c.role, c.id, op, func() {
		if st, ra := s.faults.status(c.role, c.id, op); st != 0 {
			code := st*1000 + 1
			s.dpsError(cl, c, t.RID, st, code, "Injected fault.", ra)
			return
		}
		if t.Kind == TopicDPSRegister {
			if wait := s.registerThrottled(); wait > 0 {
				s.dpsError(cl, c, t.RID, 429, errThrottled, "Too many registrations for this service.", wait)
				return
			}
		}
		if len(body) > dpsMaxMessageBytes {
			s.dpsError(cl, c, t.RID, 400, errBadRequest, "Request body exceeds the maximum message size.", 0)
			return
		}
		if c.denyCode != 0 {
			s.dpsError(cl, c, t.RID, 401, c.denyCode, "Unauthorized: "+c.denyMsg, 0)
			return
		}
		if t.Kind == TopicDPSRegister {
			s.register(cl, c, t, body)
		} else {
			s.poll(cl, c, t)
		}
	})
}

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

// registerThrottled applies --registrations-per-minute; it returns the
// seconds to wait, or 0 when the request may proceed.
func (s *Sim) registerThrottled() int {
	n := s.cfg.Switches.RegistrationsPerMinute
	if n <= 0 {
		return 0
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.regHist) && now.Sub(s.regHist[i]) >= time.Minute {
		i++
	}
	s.regHist = s.regHist[i:]
	if len(s.regHist) >= n {
		return int(s.regHist[0].Add(time.Minute).Sub(now)/time.Second) + 1
	}
	s.regHist = append(s.regHist, now)
	return 0
}

func (s *Sim) register(cl *mqtt.Client, c *conn, t Topic, body []byte) {
	var rb registerBody
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&rb); err != nil {
		s.dpsError(cl, c, t.RID, 400, errBadRequest, "Request body is not valid JSON: "+err.Error(), 0)
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		s.dpsError(cl, c, t.RID, 400, errBadRequest, "Request body has data after the JSON object.", 0)
		return
	}
	if err := ValidRegistrationID(c.id); err != nil {
		s.dpsError(cl, c, t.RID, 400, errBadRequest, err.Error()+".", 0)
		return
	}
	if rb.RegistrationID != nil && !strings.EqualFold(*rb.RegistrationID, c.id) {
		s.dpsError(cl, c, t.RID, 400, errBadRequest, fmt.Sprintf("registrationId %q in the body does not match %q.", *rb.RegistrationID, c.id), 0)
		return
	}
	if len(rb.Payload) > 0 {
		var v any
		_ = json.Unmarshal(rb.Payload, &v)
		if v != nil {
			if _, ok := v.(map[string]any); !ok {
				s.dpsError(cl, c, t.RID, 400, errBadRequest, "payload must be a JSON object.", 0)
				return
			}
		} else {
			rb.Payload = nil
		}
	}
	now := time.Now()
	// Attestation: certificate validity, revocation, enrollment.
	if now.Before(c.leaf.NotBefore) || now.After(c.leaf.NotAfter) {
		s.dpsError(cl, c, t.RID, 401, errUnauthorized, "Invalid certificate: outside its validity period.", 0)
		return
	}
	if s.isRevoked(c.chain) {
		s.dpsError(cl, c, t.RID, 401, errUnauthorized, "Invalid certificate: revoked.", 0)
		return
	}
	enr, signer := s.matchEnrollment(c)
	if enr == nil {
		s.dpsError(cl, c, t.RID, 401, errUnauthorized, "Invalid certificate.", 0)
		return
	}
	key := strings.ToLower(c.id)
	s.mu.Lock()
	prev := s.regs[key]
	regDisabled := prev != nil && prev.Disabled
	s.mu.Unlock()
	disabled := !enr.enabled() || regDisabled
	if disabled && s.cfg.Switches.DisabledEnrollment == "401" {
		s.dpsError(cl, c, t.RID, 401, errUnauthorized, "Enrollment or registration is disabled.", 0)
		return
	}
	r := &Registration{OperationID: newOperationID(), PollsLeft: s.cfg.AssigningPolls}
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
	_ = signer
	r.LeafSHA1, r.LeafSHA256 = Thumbprints(c.leaf)
	if disabled {
		r.PendingStatus = "disabled"
	} else {
		s.allocate(r, prev, enr, c, rb)
	}
	// CSR (api-version 2025-07-01-preview and later).
	if rb.CSR != nil && r.PendingStatus == "assigned" {
		if c.apiVer != csrAPIVersion && !slices.Contains(DPSDraftAPIVersions, c.apiVer) {
			if s.cfg.Switches.CSROldAPI == "reject" {
				s.dpsError(cl, c, t.RID, 400, errBadRequest, "csr requires api-version "+csrAPIVersion+".", 0)
				return
			}
		} else {
			chain, err := s.issueFromCSR(*rb.CSR, c.id, enr)
			if err != nil {
				s.dpsError(cl, c, t.RID, 400, errBadRequest, "Invalid csr: "+err.Error(), 0)
				return
			}
			r.IssuedChain = chain
		}
	}
	s.mu.Lock()
	s.regs[key] = r
	rb2 := mustJSON(r)
	s.mu.Unlock()
	if err := s.st.putRaw(bktRegs, key, rb2); err != nil {
		s.dpsError(cl, c, t.RID, 500, errInternal, "Storage failure.", 0)
		return
	}
	s.dpsReply(cl, c, 202, t.RID, s.cfg.RetryAfter, operationStatus{OperationID: r.OperationID, Status: "assigning"})
}

// matchEnrollment finds the enrollment for the presented chain (§5.1):
// individual enrollment by leaf thumbprint first; else the group whose CA
// is nearest to the leaf in the verified chain. The first match wins even
// when disabled.
func (s *Sim) matchEnrollment(c *conn) (*Enrollment, *x509.Certificate) {
	leaf := c.leaf
	s1, s256 := Thumbprints(leaf)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.indiv[strings.ToLower(c.id)]; e != nil {
		for _, ec := range e.certs {
			e1, e256 := Thumbprints(ec)
			if e1 == s1 || e256 == s256 {
				return e, nil
			}
		}
	}
	inter := x509.NewCertPool()
	for _, ic := range c.chain[1:] {
		inter.AddCert(ic)
	}
	var best *Enrollment
	var bestSigner *x509.Certificate
	bestDepth := 1 << 30
	for _, g := range s.groups {
		for _, ca := range g.certs {
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err != nil {
				continue
			}
			for _, ch := range chains {
				d := len(ch)
				if d < bestDepth || (d == bestDepth && best != nil && g.EnrollmentGroupID < best.EnrollmentGroupID) {
					best, bestSigner, bestDepth = g, ca, d
				}
			}
		}
	}
	return best, bestSigner
}

// allocate decides hub, device ID, substatus and twin handling.
func (s *Sim) allocate(r *Registration, prev *Registration, enr *Enrollment, c *conn, rb registerBody) {
	fail := func(code int, msg string) {
		r.PendingStatus, r.PendingError, r.PendingMessage = "failed", code, msg
	}
	deviceID := c.id
	if !enr.isGroup() && enr.DeviceID != "" {
		deviceID = enr.DeviceID
	}
	prevAssigned := prev != nil && prev.State.Status == "assigned" && prev.State.AssignedHub != ""
	var hub *HubConfig
	var twin = enr.InitialTwin
	var payload json.RawMessage
	if prevAssigned && !enr.updateHub() {
		hub = s.hubByHost(prev.State.AssignedHub)
		if hub == nil {
			fail(errNoHub, "Previously assigned hub no longer exists.")
			return
		}
	} else {
		cands, err := s.candidates(enr)
		if err != nil {
			fail(errNoHub, err.Error())
			return
		}
		switch enr.AllocationPolicy {
		case "static":
			if len(cands) != 1 {
				fail(errNoHub, "Static allocation needs exactly one IoT hub on the enrollment.")
				return
			}
			hub = cands[0]
		case "geoLatency":
			hub = cands[0]
			for _, h := range cands[1:] {
				if h.LatencyMs < hub.LatencyMs || (h.LatencyMs == hub.LatencyMs && h.AllocationWeight > hub.AllocationWeight) {
					hub = h
				}
			}
		case "custom":
			res, err := s.customAllocate(enr, c, rb, cands)
			if err != nil {
				fail(errHubUnauthorized, err.Error())
				return
			}
			hub = s.hubByHost(res.IoTHubHostName)
			if hub == nil {
				fail(errNoHub, fmt.Sprintf("Custom allocation returned unknown hub %q.", res.IoTHubHostName))
				return
			}
			if res.InitialTwin != nil {
				twin = res.InitialTwin
			}
			payload = res.Payload
		default: // hashed (the instance default)
			total := 0
			for _, h := range cands {
				total += max(h.AllocationWeight, 1)
			}
			f := fnv.New32a()
			f.Write([]byte(strings.ToLower(c.id)))
			n := int(f.Sum32() % uint32(total))
			for _, h := range cands {
				n -= max(h.AllocationWeight, 1)
				if n < 0 {
					hub = h
					break
				}
			}
		}
	}
	r.PendingStatus = "assigned"
	r.PendingHub = hub.Host
	r.PendingDeviceID = deviceID
	r.PendingPayload = payload
	r.PendingTwin = twin
	r.ResetTwin = true
	r.PendingSubstatus = "initialAssignment"
	if prevAssigned {
		sameHub := strings.EqualFold(prev.State.AssignedHub, hub.Host)
		switch {
		case !enr.updateHub():
			r.PendingSubstatus, r.ResetTwin = prev.State.Substatus, false
		case sameHub && enr.migrate():
			r.PendingSubstatus, r.ResetTwin = prev.State.Substatus, false
		case sameHub:
			r.PendingSubstatus = "deviceDataReset"
		case slices.ContainsFunc(prev.HubHistory, func(h string) bool { return strings.EqualFold(h, hub.Host) }):
			r.PendingSubstatus, r.ResetTwin = "reprovisionedToInitialAssignment", !enr.migrate()
		case enr.migrate():
			r.PendingSubstatus, r.ResetTwin = "deviceDataMigrated", false
		default:
			r.PendingSubstatus = "deviceDataReset"
		}
	}
}

func (s *Sim) candidates(enr *Enrollment) ([]*HubConfig, error) {
	var names []string
	switch {
	case len(enr.IoTHubs) > 0:
		names = enr.IoTHubs
	case enr.IoTHubHostName != "":
		names = []string{enr.IoTHubHostName}
	}
	var out []*HubConfig
	if names != nil {
		for _, n := range names {
			h := s.hubByHost(n)
			if h == nil {
				h = s.hubByName(n)
			}
			if h == nil {
				return nil, fmt.Errorf("Enrollment names IoT hub %q, which is not linked.", n)
			}
			out = append(out, h)
		}
		return out, nil
	}
	for _, h := range s.hubs {
		if h.ApplyAllocationPolicy {
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("No linked IoT hub is available for allocation.")
	}
	return out, nil
}

type customResult struct {
	IoTHubHostName string          `json:"iotHubHostName"`
	InitialTwin    *InitialTwin    `json:"initialTwin"`
	Payload        json.RawMessage `json:"payload"`
}

// customAllocate calls the enrollment's webhook (loopback only), as DPS
// calls an Azure Function (§5.2).
func (s *Sim) customAllocate(enr *Enrollment, c *conn, rb registerBody, cands []*HubConfig) (*customResult, error) {
	u, err := url.Parse(enr.CustomAllocationDefinition.WebhookURL)
	if err != nil {
		return nil, fmt.Errorf("Custom allocation webhook URL: %v", err)
	}
	if ip := net.ParseIP(u.Hostname()); (ip == nil || !ip.IsLoopback()) && u.Hostname() != "localhost" {
		return nil, errors.New("Custom allocation webhook must be on loopback in the simulator.")
	}
	var hubs []string
	for _, h := range cands {
		hubs = append(hubs, h.Host)
	}
	ctx := map[string]any{"registrationId": c.id, "x509": map[string]any{"certificateInfo": certInfo(c.leaf)}}
	if len(rb.Payload) > 0 {
		ctx["payload"] = rb.Payload
	}
	req := map[string]any{"deviceRuntimeContext": ctx, "linkedHubs": hubs}
	if enr.isGroup() {
		req["enrollmentGroup"] = enr
	} else {
		req["individualEnrollment"] = enr
	}
	b, _ := json.Marshal(req)
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Post(u.String(), "application/json", bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("Custom allocation failed: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("Custom allocation failed with status code: %d", resp.StatusCode)
	}
	var res customResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return nil, fmt.Errorf("Custom allocation returned invalid JSON: %v", err)
	}
	return &res, nil
}

// issueFromCSR validates a registration CSR (§2.10) and signs it.
func (s *Sim) issueFromCSR(b64, regID string, enr *Enrollment) ([]string, error) {
	if strings.Contains(b64, "-----") || strings.ContainsAny(b64, "\r\n") {
		return nil, errors.New("csr must be base64 DER without PEM armour or newlines")
	}
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("not base64: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#10 request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %v", err)
	}
	if csr.Subject.CommonName != regID {
		return nil, fmt.Errorf("subject CN %q must equal the registration id %q", csr.Subject.CommonName, regID)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("only EC keys are supported")
	}
	curve := map[elliptic.Curve]string{elliptic.P256(): "P-256", elliptic.P384(): "P-384", elliptic.P521(): "P-521"}[pub.Curve]
	if !slices.Contains(strings.Split(s.cfg.Switches.CSRCurves, ","), curve) {
		return nil, fmt.Errorf("key curve %s is not accepted (accepted: %s)", curve, s.cfg.Switches.CSRCurves)
	}
	validity := s.cfg.IssuedValidity
	if enr.IssuedCertificateValidityDays > 0 {
		validity = time.Duration(enr.IssuedCertificateValidityDays) * 24 * time.Hour
	}
	leaf, err := s.PKI.SignCSR(csr, validity)
	if err != nil {
		return nil, err
	}
	out := []string{base64.StdEncoding.EncodeToString(leaf.Raw)}
	for _, c := range s.PKI.IssuingChain() {
		out = append(out, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return out, nil
}

func (s *Sim) poll(cl *mqtt.Client, c *conn, t Topic) {
	key := strings.ToLower(c.id)
	now := time.Now()
	s.mu.Lock()
	hist := s.pollHist[key]
	cut := now.Add(-s.cfg.PollWindow)
	i := 0
	for i < len(hist) && hist[i].Before(cut) {
		i++
	}
	hist = hist[i:]
	if s.cfg.PollLimit > 0 && len(hist) >= s.cfg.PollLimit {
		wait := int(hist[0].Add(s.cfg.PollWindow).Sub(now)/time.Second) + 1
		s.pollHist[key] = hist
		s.mu.Unlock()
		s.dpsError(cl, c, t.RID, 429, errThrottled, "Too many operation status requests.", wait)
		return
	}
	s.pollHist[key] = append(hist, now)
	r := s.regs[key]
	if r == nil || r.OperationID != t.OperationID {
		s.mu.Unlock()
		s.dpsError(cl, c, t.RID, 404, errNotFound, "Operation not found.", 0)
		return
	}
	if r.State.Status == "assigning" && r.PollsLeft > 0 {
		r.PollsLeft--
		st := RegistrationState{RegistrationID: r.State.RegistrationID, Status: "assigning"}
		// Not persisted: after a restart the device merely polls once more.
		s.mu.Unlock()
		s.dpsReply(cl, c, 202, t.RID, s.cfg.RetryAfter, operationStatus{OperationID: r.OperationID, Status: "assigning", RegistrationState: &st})
		return
	}
	var writes []write
	if r.State.Status == "assigning" {
		writes = s.completeLocked(r)
	}
	st := r.State
	st.IssuedCertificateChain = r.IssuedChain
	if p := s.cfg.Switches.ConnectionProfile; p != "" && st.Status == "assigned" && (c.apiVer == "2026-11-02-preview" || c.apiVer == "2026-11-15-preview") {
		st.ConnectionProfile = p
	}
	opID := r.OperationID
	writes = append(writes, write{bkt: bktRegs, key: key, val: mustJSON(r)})
	s.mu.Unlock()
	if err := s.flush(writes); err != nil {
		s.dpsError(cl, c, t.RID, 500, errInternal, "Storage failure.", 0)
		return
	}
	status := 200
	if st.Status == "failed" && s.cfg.Switches.FailedTopicStatus != 0 {
		status = s.cfg.Switches.FailedTopicStatus
	}
	s.dpsReply(cl, c, status, t.RID, -1, operationStatus{OperationID: opID, Status: st.Status, RegistrationState: &st})
}

// completeLocked applies a pending assignment: creates or moves the hub
// device, applies the initial twin. s.mu is held.
// write is one store update prepared under s.mu and applied after it.
type write struct {
	bkt []byte
	key string
	val []byte // nil = delete
}

func (s *Sim) flush(ws []write) error {
	for _, w := range ws {
		var err error
		if w.val == nil {
			err = s.st.del(w.bkt, w.key)
		} else {
			err = s.st.putRaw(w.bkt, w.key, w.val)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Sim) completeLocked(r *Registration) (writes []write) {
	r.State.LastUpdatedDateTimeUtc = nowUTC()
	r.State.Etag = newEtag()
	switch r.PendingStatus {
	case "failed":
		r.State.Status = "failed"
		r.State.ErrorCode, r.State.ErrorMessage = r.PendingError, r.PendingMessage
		r.State.AssignedHub, r.State.DeviceID, r.State.Substatus = "", "", ""
		return nil
	case "disabled":
		r.State.Status = "disabled"
		r.State.AssignedHub, r.State.DeviceID, r.State.Substatus = "", "", ""
		return nil
	}
	hub := s.hubByHost(r.PendingHub)
	if hub == nil {
		r.State.Status, r.State.ErrorCode, r.State.ErrorMessage = "failed", errNoHub, "Assigned hub vanished."
		return nil
	}
	newKey := hub.Name + "/" + r.PendingDeviceID
	var old *DeviceRecord
	if oh := s.hubByHost(r.State.AssignedHub); oh != nil && r.State.DeviceID != "" {
		oldKey := oh.Name + "/" + r.State.DeviceID
		old = s.devices[oldKey]
		if old != nil && oldKey != newKey {
			delete(s.devices, oldKey)
			writes = append(writes, write{bkt: bktDevices, key: oldKey})
			if cl := s.online[oldKey]; cl != nil {
				cl.Stop(errClosed)
			}
		}
	}
	d := s.devices[newKey]
	if d == nil {
		d = &DeviceRecord{Hub: hub.Name}
		if old != nil {
			d.Twin = old.Twin // migrate device data
		}
		d.Device = newDevice(r.PendingDeviceID)
		if old == nil || r.ResetTwin {
			d.Twin = newTwin()
		}
	}
	if r.ResetTwin {
		d.Twin = newTwin()
		if r.PendingTwin != nil {
			d.Twin.Tags = cloneMap(r.PendingTwin.Tags)
			if r.PendingTwin.Properties.Desired != nil {
				d.Twin.Desired = cloneMap(r.PendingTwin.Properties.Desired)
				d.Twin.DesiredVersion++
			}
		}
	}
	if len(r.IssuedChain) > 0 {
		d.CAIssued = true
		der, _ := base64.StdEncoding.DecodeString(r.IssuedChain[0])
		if ic, err := x509.ParseCertificate(der); err == nil {
			_, t256 := Thumbprints(ic)
			d.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: t256}}
		}
	} else {
		d.CAIssued = false
		d.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: r.LeafSHA256}}
	}
	d.Device.Etag = newEtag()
	s.devices[newKey] = d
	writes = append(writes, write{bkt: bktDevices, key: newKey, val: mustJSON(d)})
	r.State.Status = "assigned"
	r.State.AssignedHub = hub.Host
	r.State.DeviceID = r.PendingDeviceID
	r.State.Substatus = r.PendingSubstatus
	r.State.Payload = r.PendingPayload
	if len(r.HubHistory) == 0 || !strings.EqualFold(r.HubHistory[len(r.HubHistory)-1], hub.Host) {
		r.HubHistory = append(r.HubHistory, hub.Host)
	}
	return writes
}

func newDevice(id string) Device {
	now := nowUTC()
	return Device{
		DeviceID:                   id,
		GenerationID:               fmt.Sprintf("63%016d", time.Now().UnixNano()%1e16),
		Etag:                       newEtag(),
		ConnectionState:            "Disconnected",
		Status:                     "enabled",
		ConnectionStateUpdatedTime: now,
		StatusUpdatedTime:          now,
		LastActivityTime:           "0001-01-01T00:00:00Z",
		Capabilities:               map[string]any{"iotEdge": false},
	}
}

func newTwin() TwinState {
	return TwinState{Tags: map[string]any{}, Desired: map[string]any{}, Reported: map[string]any{}, DesiredVersion: 1, ReportedVersion: 1, Version: 1}
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

// isRevoked reports whether any certificate of chain was revoked through
// the control plane.
func (s *Sim) isRevoked(chain []*x509.Certificate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range chain {
		_, t := Thumbprints(c)
		if _, ok := s.revoked[t]; ok {
			return true
		}
		for _, r := range s.revoked {
			if r.matchesSerial(c) {
				return true
			}
		}
	}
	return false
}
