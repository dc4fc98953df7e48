package simulator

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// registry is the simulator's one source of truth, shared by the DPS and
// hub services and the control plane: enrollments, registrations, hub
// devices, revocations and hub allocation settings, kept in memory under
// mu and written through to the store before anyone is answered.
//
// The live part (which client is connected as which device, C2D messages
// in flight) is not persisted but shares mu: hub authentication, a
// control-plane disable and a DPS re-assignment must each see it together
// with the device record, or a device could stay connected after it was
// disabled.
//
// Lock order: mu before connTable.mu; never the other way round.
type registry struct {
	db *store

	mu      sync.Mutex
	groups  map[string]*Enrollment   // by enrollment group ID
	indiv   map[string]*Enrollment   // by lower-case registration ID
	regs    map[string]*Registration // by lower-case registration ID
	devices map[string]*DeviceRecord // by deviceKey(hub, device ID)
	revoked map[string]revokedCert   // by revocation key (SHA-256 thumbprint, serial or CRL entry)
	hubs    []*HubConfig
	crlNum  int64

	online map[string]*mqtt.Client // deviceKey -> live hub connection
	c2d    map[string]*c2dFlight   // deviceKey -> C2D messages awaiting PUBACK
}

func newRegistry(db *store, hubs []HubConfig) *registry {
	r := &registry{
		db:      db,
		groups:  map[string]*Enrollment{},
		indiv:   map[string]*Enrollment{},
		regs:    map[string]*Registration{},
		devices: map[string]*DeviceRecord{},
		revoked: map[string]revokedCert{},
		online:  map[string]*mqtt.Client{},
		c2d:     map[string]*c2dFlight{},
	}
	for i := range hubs {
		h := hubs[i]
		r.hubs = append(r.hubs, &h)
	}
	return r
}

// deviceKey names a hub device in the registry and the store.
func deviceKey(hub, deviceID string) string { return hub + "/" + deviceID }

// load reads every record back from the store.
func (r *registry) load() error {
	for _, step := range []func() error{r.loadEnrollments, r.loadRegistrations, r.loadDevices, r.loadRevoked} {
		if err := step(); err != nil {
			return err
		}
	}
	r.loadMeta()
	return nil
}

// loadJSON decodes every value of bucket into a fresh T and hands it to add.
func loadJSON[T any](db *store, bucket []byte, what string, add func(key string, v *T) error) error {
	return db.each(bucket, func(k, b []byte) error {
		v := new(T)
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("%s %s: %w", what, k, err)
		}
		if err := add(string(k), v); err != nil {
			return fmt.Errorf("%s %s: %w", what, k, err)
		}
		return nil
	})
}

func (r *registry) loadEnrollments() error {
	if err := loadJSON(r.db, bktGroups, "enrollment group", func(_ string, e *Enrollment) error {
		r.groups[e.EnrollmentGroupID] = e
		return e.prepare()
	}); err != nil {
		return err
	}
	return loadJSON(r.db, bktEnrollments, "enrollment", func(_ string, e *Enrollment) error {
		r.indiv[strings.ToLower(e.RegistrationID)] = e
		return e.prepare()
	})
}

func (r *registry) loadRegistrations() error {
	return loadJSON(r.db, bktRegs, "registration", func(k string, reg *Registration) error {
		r.regs[k] = reg
		return nil
	})
}

func (r *registry) loadDevices() error {
	return loadJSON(r.db, bktDevices, "device", func(k string, d *DeviceRecord) error {
		d.Device.ConnectionState = "Disconnected"
		r.devices[k] = d
		return nil
	})
}

func (r *registry) loadRevoked() error {
	return loadJSON(r.db, bktRevoked, "revoked", func(k string, rc *revokedCert) error {
		r.revoked[k] = *rc
		return nil
	})
}

func (r *registry) loadMeta() {
	if b := r.db.getMeta("crlNumber"); b != nil {
		fmt.Sscan(string(b), &r.crlNum)
	}
	b := r.db.getMeta("hubs")
	if b == nil {
		return
	}
	// Allocation settings changed through the control plane survive restarts.
	var saved []HubConfig
	if json.Unmarshal(b, &saved) != nil {
		return
	}
	for _, sv := range saved {
		if h := r.hubByName(sv.Name); h != nil {
			h.AllocationWeight, h.ApplyAllocationPolicy, h.LatencyMs = sv.AllocationWeight, sv.ApplyAllocationPolicy, sv.LatencyMs
		}
	}
}

func (r *registry) hubByName(name string) *HubConfig {
	for _, h := range r.hubs {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func (r *registry) hubByHost(host string) *HubConfig {
	for _, h := range r.hubs {
		if strings.EqualFold(h.Host, host) {
			return h
		}
	}
	return nil
}

// namedHub finds a hub by name or host name; "" means the first hub.
func (r *registry) namedHub(name string) *HubConfig {
	if name == "" {
		return r.hubs[0]
	}
	if h := r.hubByName(name); h != nil {
		return h
	}
	return r.hubByHost(name)
}

// hubsLocked copies every hub's settings; mu must be held.
func (r *registry) hubsLocked() []HubConfig {
	out := []HubConfig{}
	for _, h := range r.hubs {
		out = append(out, *h)
	}
	return out
}

// hostOf returns the host name of the hub called name, or "".
func (r *registry) hostOf(name string) string {
	if h := r.hubByName(name); h != nil {
		return h.Host
	}
	return ""
}

// write is one store update prepared under mu and applied after it, so
// fsyncs batch and never block the broker's hooks.
type write struct {
	bkt []byte
	key string
	val []byte // nil = delete
}

func (r *registry) flush(ws []write) error {
	for _, w := range ws {
		var err error
		if w.val == nil {
			err = r.db.del(w.bkt, w.key)
		} else {
			err = r.db.putRaw(w.bkt, w.key, w.val)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
