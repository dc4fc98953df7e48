package simulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

const twinResFmt = "$iothub/twin/res/%d/?$rid=%s"

var errNotFoundErr = errors.New("not found")

// twinRequest answers a device's twin GET or reported-properties PATCH.
func (h *hubService) twinRequest(cl *mqtt.Client, c *conn, t Topic, payload []byte) {
	if st, _ := h.faults.status(c.role, c.id, "twin"); st != 0 {
		h.reply(cl, c, twinResFmt, st, t.RID, errorBody(st*1000+1, "Injected fault."), "")
		return
	}
	if t.Kind == TopicTwinGet {
		h.twinGet(cl, c, t)
		return
	}
	h.twinPatchReported(cl, c, t, payload)
}

func (h *hubService) twinGet(cl *mqtt.Client, c *conn, t Topic) {
	h.reg.mu.Lock()
	d := h.reg.devices[deviceKey(c.role, c.id)]
	if d == nil {
		h.reg.mu.Unlock()
		h.reply(cl, c, twinResFmt, 404, t.RID, errorBody(404001, "Device not found."), "")
		return
	}
	body := map[string]any{"desired": withVersion(d.Twin.Desired, d.Twin.DesiredVersion), "reported": withVersion(d.Twin.Reported, d.Twin.ReportedVersion)}
	h.reg.mu.Unlock()
	h.reply(cl, c, twinResFmt, 200, t.RID, body, "")
}

// decodeReportedPatch parses a reported-properties patch: a JSON object
// of at most 32 KB; "$version" is the service's and is dropped. A bad
// patch gets the hub's 400 message instead.
func decodeReportedPatch(payload []byte) (map[string]any, string) {
	if len(payload) > hubMaxTwin {
		return nil, "Reported properties exceed 32 KB."
	}
	var patch map[string]any
	if err := json.Unmarshal(payload, &patch); err != nil || patch == nil {
		return nil, "Reported patch is not a JSON object."
	}
	delete(patch, "$version")
	return patch, ""
}

func (h *hubService) twinPatchReported(cl *mqtt.Client, c *conn, t Topic, payload []byte) {
	patch, bad := decodeReportedPatch(payload)
	if bad != "" {
		h.reply(cl, c, twinResFmt, 400, t.RID, errorBody(400004, bad), "")
		return
	}
	key := deviceKey(c.role, c.id)
	h.reg.mu.Lock()
	d := h.reg.devices[key]
	if d == nil {
		h.reg.mu.Unlock()
		h.reply(cl, c, twinResFmt, 404, t.RID, errorBody(404001, "Device not found."), "")
		return
	}
	if d.Twin.Reported == nil {
		d.Twin.Reported = map[string]any{}
	}
	mergePatch(d.Twin.Reported, patch)
	d.Twin.ReportedVersion++
	d.Twin.Version++
	v := d.Twin.ReportedVersion
	b := mustJSON(d)
	h.reg.mu.Unlock()
	_ = h.reg.db.putRaw(bktDevices, key, b)
	h.reply(cl, c, twinResFmt, 204, t.RID, nil, fmt.Sprintf("&$version=%d", v))
}

func withVersion(m map[string]any, v int) map[string]any {
	out := cloneMap(m)
	out["$version"] = v
	return out
}

// mergePatch applies a JSON merge patch: null deletes, objects merge.
func mergePatch(dst, patch map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			continue
		}
		if pm, ok := v.(map[string]any); ok {
			dm, ok := dst[k].(map[string]any)
			if !ok {
				dm = map[string]any{}
			}
			mergePatch(dm, pm)
			dst[k] = dm
			continue
		}
		dst[k] = v
	}
}

// updateDesired merges patch into the desired properties (or replaces
// them) and tags, and pushes the change to the device if it is connected
// and subscribed.
func (h *hubService) updateDesired(hub, deviceID string, patch map[string]any, tags map[string]any, replace bool) (TwinState, error) {
	key := deviceKey(hub, deviceID)
	h.reg.mu.Lock()
	d := h.reg.devices[key]
	if d == nil {
		h.reg.mu.Unlock()
		return TwinState{}, errNotFoundErr
	}
	if tags != nil {
		if replace {
			d.Twin.Tags = cloneMap(tags)
		} else {
			mergePatch(d.Twin.Tags, cloneMap(tags))
		}
	}
	var push []byte
	if patch != nil {
		push = applyDesired(&d.Twin, patch, replace)
	}
	d.Twin.Version++
	var tw TwinState
	b := mustJSON(d)
	_ = json.Unmarshal(mustJSON(d.Twin), &tw)
	cl := h.liveLocked(key)
	h.reg.mu.Unlock()
	if err := h.reg.db.putRaw(bktDevices, key, b); err != nil {
		return tw, err
	}
	if push != nil && cl != nil {
		if _, ok := subscribedQoS(cl, "$iothub/twin/PATCH/properties/desired/#"); ok {
			_, _ = sendTo(cl, fmt.Sprintf("$iothub/twin/PATCH/properties/desired/?$version=%d", tw.DesiredVersion), push, 0)
		}
	}
	return tw, nil
}

// applyDesired merges (or replaces) the desired properties and returns
// the push body: the changed members and the new $version.
func applyDesired(tw *TwinState, patch map[string]any, replace bool) []byte {
	p := cloneMap(patch)
	delete(p, "$version")
	delete(p, "$metadata")
	if replace {
		tw.Desired = p
	} else {
		mergePatch(tw.Desired, p)
	}
	tw.DesiredVersion++
	body := cloneMap(p)
	body["$version"] = tw.DesiredVersion
	push, _ := json.Marshal(body)
	return push
}

// invokeMethod calls a direct method and waits for the device's answer.
func (h *hubService) invokeMethod(hub, deviceID, name string, payload json.RawMessage, timeout, connectTimeout time.Duration) (int, json.RawMessage, error) {
	key := deviceKey(hub, deviceID)
	cl, err := h.waitMethodSubscriber(key, deviceID, connectTimeout)
	if err != nil {
		return 404, nil, err
	}
	rid := newUUID()
	ch := make(chan methodResult, 1)
	mkey := key + "/" + rid
	h.mmu.Lock()
	h.methods[mkey] = ch
	h.mmu.Unlock()
	defer func() {
		h.mmu.Lock()
		delete(h.methods, mkey)
		h.mmu.Unlock()
	}()
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	if _, err := sendTo(cl, fmt.Sprintf("$iothub/methods/POST/%s/?$rid=%s", name, rid), payload, 0); err != nil {
		return 404, nil, fmt.Errorf("device %q went offline", deviceID)
	}
	select {
	case r := <-ch:
		return r.status, r.payload, nil
	case <-time.After(timeout):
		return 504, nil, errors.New("timed out waiting for the device's response")
	}
}

// waitMethodSubscriber returns the device's live connection once it is
// subscribed to direct methods, waiting up to connectTimeout.
func (h *hubService) waitMethodSubscriber(key, deviceID string, connectTimeout time.Duration) (*mqtt.Client, error) {
	deadline := time.Now().Add(connectTimeout)
	for {
		h.reg.mu.Lock()
		cl := h.liveLocked(key)
		exists := h.reg.devices[key] != nil
		h.reg.mu.Unlock()
		if !exists {
			return nil, fmt.Errorf("device %q not found", deviceID)
		}
		if cl != nil {
			if _, ok := subscribedQoS(cl, "$iothub/methods/POST/#"); ok {
				return cl, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("device %q is not online or not subscribed to methods", deviceID)
		}
		time.Sleep(50 * time.Millisecond) // bounded by connectTimeout
	}
}

// methodResponse hands a device's method answer to the waiting call.
func (h *hubService) methodResponse(c *conn, t Topic, payload []byte) {
	key := deviceKey(c.role, c.id) + "/" + t.RID
	h.mmu.Lock()
	ch := h.methods[key]
	delete(h.methods, key)
	h.mmu.Unlock()
	if ch != nil {
		ch <- methodResult{status: t.Status, payload: payload}
	}
}
