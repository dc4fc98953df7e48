package simulator

import (
	"bytes"
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
)

// matchEnrollment finds the enrollment for a registration ID and the
// chain it presented: the individual enrollment whose certificate
// thumbprint (SHA-1 or SHA-256) is the leaf's first; else the group whose
// CA is nearest the leaf in a chain verified through the presented
// intermediates (ties: the lowest group ID). The first match wins even
// when disabled.
func (r *registry) matchEnrollment(id string, chain []*x509.Certificate) *Enrollment {
	leaf := chain[0]
	s1, s256 := Thumbprints(leaf)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.indiv[strings.ToLower(id)]; e != nil {
		for _, ec := range e.certs {
			e1, e256 := Thumbprints(ec)
			if e1 == s1 || e256 == s256 {
				return e
			}
		}
	}
	inter := certPool(chain[1:])
	var best *Enrollment
	bestDepth := 1 << 30
	for _, g := range r.groups {
		for _, ca := range g.certs {
			chains, err := leaf.Verify(x509.VerifyOptions{Roots: certPool([]*x509.Certificate{ca}), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err != nil {
				continue
			}
			for _, ch := range chains {
				d := len(ch)
				if d < bestDepth || (d == bestDepth && best != nil && g.EnrollmentGroupID < best.EnrollmentGroupID) {
					best, bestDepth = g, d
				}
			}
		}
	}
	return best
}

// allocate decides hub, device ID, substatus and twin handling of an
// operation; they are applied when the device polls for the result.
func (d *dpsService) allocate(r *Registration, prev *Registration, enr *Enrollment, c *conn, rb registerBody) {
	deviceID := c.id
	if !enr.isGroup() && enr.DeviceID != "" {
		deviceID = enr.DeviceID
	}
	prevAssigned := prev != nil && prev.State.Status == "assigned" && prev.State.AssignedHub != ""
	var a allocation
	if prevAssigned && !enr.updateHub() {
		a.hub = d.reg.hubByHost(prev.State.AssignedHub)
		if a.hub == nil {
			a.code, a.msg = errNoHub, "Previously assigned hub no longer exists."
		}
	} else {
		a = d.pickHub(enr, c, rb)
	}
	if a.code != 0 {
		r.PendingStatus, r.PendingError, r.PendingMessage = "failed", a.code, a.msg
		return
	}
	r.PendingStatus = "assigned"
	r.PendingHub = a.hub.Host
	r.PendingDeviceID = deviceID
	r.PendingPayload = a.payload
	r.PendingTwin = enr.InitialTwin
	if a.twin != nil {
		r.PendingTwin = a.twin
	}
	r.ResetTwin = true
	r.PendingSubstatus = "initialAssignment"
	if prevAssigned {
		r.PendingSubstatus, r.ResetTwin = reprovision(prev, enr, a.hub.Host)
	}
}

// reprovision returns the substatus of a later registration of an
// assigned device that lands on hub, and whether its twin is reset.
func reprovision(prev *Registration, enr *Enrollment, hub string) (substatus string, resetTwin bool) {
	sameHub := strings.EqualFold(prev.State.AssignedHub, hub)
	switch {
	case !enr.updateHub():
		return prev.State.Substatus, false
	case sameHub && enr.migrate():
		return prev.State.Substatus, false
	case sameHub:
		return "deviceDataReset", true
	case slices.ContainsFunc(prev.HubHistory, func(h string) bool { return strings.EqualFold(h, hub) }):
		return "reprovisionedToInitialAssignment", !enr.migrate()
	case enr.migrate():
		return "deviceDataMigrated", false
	default:
		return "deviceDataReset", true
	}
}

// allocation is the outcome of an allocation policy: a hub (with the
// custom webhook's twin and payload) or a failure code and message.
type allocation struct {
	hub     *HubConfig
	twin    *InitialTwin
	payload json.RawMessage
	code    int
	msg     string
}

// pickHub applies the enrollment's allocation policy to its candidates.
func (d *dpsService) pickHub(enr *Enrollment, c *conn, rb registerBody) allocation {
	cands, err := d.reg.candidates(enr)
	if err != nil {
		return allocation{code: errNoHub, msg: err.Error()}
	}
	switch enr.AllocationPolicy {
	case "static":
		if len(cands) != 1 {
			return allocation{code: errNoHub, msg: "Static allocation needs exactly one IoT hub on the enrollment."}
		}
		return allocation{hub: cands[0]}
	case "geoLatency":
		return allocation{hub: nearest(cands)}
	case "custom":
		res, err := customAllocate(enr, c, rb, cands)
		if err != nil {
			return allocation{code: errHubUnauthorized, msg: err.Error()}
		}
		hub := d.reg.hubByHost(res.IoTHubHostName)
		if hub == nil {
			return allocation{code: errNoHub, msg: fmt.Sprintf("Custom allocation returned unknown hub %q.", res.IoTHubHostName)}
		}
		return allocation{hub: hub, twin: res.InitialTwin, payload: res.Payload}
	default: // hashed (the instance default)
		return allocation{hub: hashed(cands, c.id)}
	}
}

// nearest is geoLatency allocation: the lowest latency, ties to the
// highest weight.
func nearest(cands []*HubConfig) *HubConfig {
	hub := cands[0]
	for _, h := range cands[1:] {
		if h.LatencyMs < hub.LatencyMs || (h.LatencyMs == hub.LatencyMs && h.AllocationWeight > hub.AllocationWeight) {
			hub = h
		}
	}
	return hub
}

// hashed is hashed allocation: an FNV hash of the lower-case
// registration ID over the candidates, weighted by allocationWeight.
func hashed(cands []*HubConfig, id string) *HubConfig {
	total := 0
	for _, h := range cands {
		total += max(h.AllocationWeight, 1)
	}
	f := fnv.New32a()
	f.Write([]byte(strings.ToLower(id)))
	n := int(f.Sum32() % uint32(total))
	for _, h := range cands {
		n -= max(h.AllocationWeight, 1)
		if n < 0 {
			return h
		}
	}
	return nil
}

// candidates are the hubs an enrollment may be allocated to: the hubs it
// names (host or hub names), else every hub with applyAllocationPolicy.
func (r *registry) candidates(enr *Enrollment) ([]*HubConfig, error) {
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
			h := r.hubByHost(n)
			if h == nil {
				h = r.hubByName(n)
			}
			if h == nil {
				return nil, fmt.Errorf("Enrollment names IoT hub %q, which is not linked.", n)
			}
			out = append(out, h)
		}
		return out, nil
	}
	for _, h := range r.hubs {
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
// calls an Azure Function for custom allocation.
func customAllocate(enr *Enrollment, c *conn, rb registerBody, cands []*HubConfig) (*customResult, error) {
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

// completeLocked applies a pending assignment on the first poll after the
// "assigning" ones: creates or moves the hub device and applies the
// initial twin. reg.mu is held; the returned writes go to the store after.
func (d *dpsService) completeLocked(r *Registration) (writes []write) {
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
	hub := d.reg.hubByHost(r.PendingHub)
	if hub == nil {
		r.State.Status, r.State.ErrorCode, r.State.ErrorMessage = "failed", errNoHub, "Assigned hub vanished."
		return nil
	}
	newKey := deviceKey(hub.Name, r.PendingDeviceID)
	old, writes := d.reg.takeOldDeviceLocked(r, newKey)
	dev := d.reg.devices[newKey]
	if dev == nil {
		dev = &DeviceRecord{Hub: hub.Name, Device: newDevice(r.PendingDeviceID), Twin: newTwin()}
		if old != nil && !r.ResetTwin {
			dev.Twin = old.Twin // migrate device data
		}
	}
	if r.ResetTwin {
		dev.Twin = initialTwin(r.PendingTwin)
	}
	bindRegistered(dev, r)
	dev.Device.Etag = newEtag()
	d.reg.devices[newKey] = dev
	writes = append(writes, write{bkt: bktDevices, key: newKey, val: mustJSON(dev)})
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

// takeOldDeviceLocked returns the device r was assigned to before. When
// it is not the device at newKey it is deleted (a write) and its live
// connection closed. reg.mu is held.
func (r *registry) takeOldDeviceLocked(reg *Registration, newKey string) (*DeviceRecord, []write) {
	oh := r.hubByHost(reg.State.AssignedHub)
	if oh == nil || reg.State.DeviceID == "" {
		return nil, nil
	}
	oldKey := deviceKey(oh.Name, reg.State.DeviceID)
	old := r.devices[oldKey]
	if old == nil || oldKey == newKey {
		return old, nil
	}
	delete(r.devices, oldKey)
	if cl := r.online[oldKey]; cl != nil {
		cl.Stop(errClosed)
	}
	return old, []write{{bkt: bktDevices, key: oldKey}}
}

// initialTwin is a fresh twin with an enrollment's initial tags and
// desired properties.
func initialTwin(it *InitialTwin) TwinState {
	tw := newTwin()
	if it == nil {
		return tw
	}
	tw.Tags = cloneMap(it.Tags)
	if it.Properties.Desired != nil {
		tw.Desired = cloneMap(it.Properties.Desired)
		tw.DesiredVersion++
	}
	return tw
}

// bindRegistered binds the hub device to the certificate the device
// registered with, or to the one DPS issued for its csr.
func bindRegistered(dev *DeviceRecord, r *Registration) {
	if len(r.IssuedChain) == 0 {
		dev.CAIssued = false
		dev.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: r.LeafSHA256}}
		return
	}
	dev.CAIssued = true
	der, _ := base64.StdEncoding.DecodeString(r.IssuedChain[0])
	if ic, err := x509.ParseCertificate(der); err == nil {
		_, t256 := Thumbprints(ic)
		dev.Device.Authentication = Authentication{Type: "selfSigned", X509Thumbprint: &X509Thumbprint{PrimaryThumbprint: t256}}
	}
}
