package simulator

import (
	"crypto/x509"
	"sort"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"devid/simulator/simapi"
)

// conn is the simulator's view of one MQTT connection.
type conn struct {
	role     string // "dps" or hub name
	id       string // registration id or device id
	apiVer   string
	chain    []*x509.Certificate
	leaf     *x509.Certificate
	clean    bool
	msgs     atomic.Int64
	denyCode int // DPS: error to answer on register (when DPSIDMismatch = register)
	denyMsg  string

	// Telemetry results waiting for their PUBACK (hub.go, queueAnswer).
	amu       sync.Mutex
	answers   []telAck
	answering bool
}

// connTable tracks every MQTT connection from CONNECT to disconnect.
// A connection is pending until it authenticates; only then do its
// fields become final and visible to the services and the control plane.
//
// Never take registry.mu while holding mu.
type connTable struct {
	mu      sync.RWMutex
	conns   map[*mqtt.Client]*conn
	pending map[*mqtt.Client]*conn // between CONNECT and authentication
}

func newConnTable() *connTable {
	return &connTable{conns: map[*mqtt.Client]*conn{}, pending: map[*mqtt.Client]*conn{}}
}

// connect records a new connection before it authenticates.
func (t *connTable) connect(cl *mqtt.Client, c *conn) {
	t.mu.Lock()
	t.pending[cl] = c
	t.mu.Unlock()
}

// claim takes cl's pending connection for authentication.
func (t *connTable) claim(cl *mqtt.Client) *conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.pending[cl]
	delete(t.pending, cl)
	return c
}

// admit publishes an authenticated connection.
func (t *connTable) admit(cl *mqtt.Client, c *conn) {
	t.mu.Lock()
	t.conns[cl] = c
	t.mu.Unlock()
}

// get returns cl's authenticated connection, or nil.
func (t *connTable) get(cl *mqtt.Client) *conn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.conns[cl]
}

// remove forgets cl, pending or authenticated, and returns what it was.
func (t *connTable) remove(cl *mqtt.Client) *conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.conns[cl]
	delete(t.conns, cl)
	delete(t.pending, cl)
	return c
}

// matching returns the clients whose connection satisfies keep.
func (t *connTable) matching(keep func(*conn) bool) []*mqtt.Client {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []*mqtt.Client
	for cl, c := range t.conns {
		if keep(c) {
			out = append(out, cl)
		}
	}
	return out
}

// kick closes every connection that satisfies keep and returns how many.
func (t *connTable) kick(keep func(*conn) bool) int {
	cls := t.matching(keep)
	for _, cl := range cls {
		cl.Stop(errClosed)
	}
	return len(cls)
}

// intermediates returns the CA certificates live connections presented
// above their leaf.
func (t *connTable) intermediates() []*x509.Certificate {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []*x509.Certificate
	for _, c := range t.conns {
		if len(c.chain) > 1 {
			out = append(out, c.chain[1:]...)
		}
	}
	return out
}

// list describes every authenticated connection, sorted by endpoint and id.
func (t *connTable) list() []simapi.ConnectionInfo {
	t.mu.RLock()
	out := []simapi.ConnectionInfo{}
	for cl, c := range t.conns {
		ci := simapi.ConnectionInfo{Endpoint: c.role, ID: c.id, APIVersion: c.apiVer, Remote: cl.Net.Remote, Listener: cl.Net.Listener}
		if c.leaf != nil {
			ci.Subject = c.leaf.Subject.String()
		}
		out = append(out, ci)
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint+out[i].ID < out[j].Endpoint+out[j].ID })
	return out
}
