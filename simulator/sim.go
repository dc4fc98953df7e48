package simulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// HubConfig describes one simulated IoT hub.
type HubConfig struct {
	Name   string `json:"name"`
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
	// AllocationWeight (1..1000) weights hashed allocation; default 1.
	AllocationWeight int `json:"allocationWeight"`
	// ApplyAllocationPolicy false removes the hub from allocation unless
	// an enrollment names it explicitly.
	ApplyAllocationPolicy bool `json:"applyAllocationPolicy"`
	// LatencyMs is the configured latency used by geoLatency allocation.
	LatencyMs int `json:"latencyMs"`
}

// Switches select the simulator's behaviour where the reference marks a
// fact UNCONFIRMED or CONFLICT. Defaults are the most likely real
// behaviour; docs/simulator.md lists each with its reference section.
type Switches struct {
	// DPSIDMismatch: ClientId != username registration id, or leaf CN !=
	// registration id. "connack" (CONNACK 5) or "register" (401 on register). §2.1
	DPSIDMismatch string
	// DisabledEnrollment: "status" (operation ends with status "disabled")
	// or "401" (401002 on register). §2.7
	DisabledEnrollment string
	// DPSResponseQoS: "granted" = min(granted, 1); "0" = always QoS 0. §2.2
	DPSResponseQoS string
	// FailedTopicStatus: topic status of a completed-but-failed operation
	// (200, or e.g. 400 to report it as an error). §2.6
	FailedTopicStatus int
	// CSRCurves: accepted CSR key curves ("P-256,P-384"). §2.10
	CSRCurves string
	// HubRetain: retained telemetry: "property" (forward with app property
	// mqtt-retain, per DOCS-hub-mqtt) or "close" (drop the connection). §3.3
	HubRetain string
	// HubUnknownTopic: "close" or "ignore" a publish to an undocumented topic. §3.3
	HubUnknownTopic string
	// DPSMaxTLS / HubMaxTLS: "1.2" (default, confirmed for DPS) or "1.3". §1.3
	DPSMaxTLS string
	HubMaxTLS string
	// RequireSNI: refuse TLS without SNI. §1.3
	RequireSNI bool
	// APIVersions: "strict" refuses api-versions not in the reference,
	// "lenient" accepts any. §2.1/§3.1
	APIVersions string
	// DraftAPIVersions accepts the 2026-11-xx draft DPS versions. §2.1
	DraftAPIVersions bool
	// CSROldAPI: "ignore" or "reject" (400) a csr sent with an api-version
	// before 2025-07-01-preview. §2.10
	CSROldAPI string
	// HubCredentialsTopic: spelling of the hub certificate-renewal topics
	// accepted: "credentials" (SDKs), "credential" (docs) or "both". §3.8
	HubCredentialsTopic string
	// HubCredentialsResponse: 200 body of the hub certificate renewal:
	// "array" (bare base64 DER array, SDK) or "object" ({"certificates":[PEM]}, docs). §3.8
	HubCredentialsResponse string
	// DPSErrorMessageField: name of the text field of DPS error bodies:
	// "message" (reference §2.6, service TypeSpec), "errorMessage" (issue 3
	// wording) or "both".
	DPSErrorMessageField string
	// ConnectionProfile, when set, is returned as
	// registrationState.connectionProfile to devices using the draft
	// api-versions 2026-11-02-preview / 2026-11-15-preview. §2.11
	ConnectionProfile string
	// RegistrationsPerMinute throttles register requests per service with
	// 429 (the documented quota is 1,000/min, older docs say 200; 0 = off
	// so load tests can exceed it). §5.6
	RegistrationsPerMinute int
}

// DefaultSwitches returns the defaults documented in docs/simulator.md.
func DefaultSwitches() Switches {
	return Switches{
		DPSIDMismatch:      "connack",
		DisabledEnrollment: "status",
		DPSResponseQoS:     "granted",
		FailedTopicStatus:  200,
		CSRCurves:          "P-256,P-384",
		HubRetain:          "property",
		HubUnknownTopic:    "close",
		DPSMaxTLS:          "1.2",
		HubMaxTLS:          "1.2",
		APIVersions:        "strict",
		CSROldAPI:          "ignore",
		// Both spellings: the simulator answers on the family the device used.
		HubCredentialsTopic:    "both",
		HubCredentialsResponse: "array",
		DPSErrorMessageField:   "message",
	}
}

// withDefaults fills every unset switch with its default.
func withDefaults(sw Switches) Switches {
	d := DefaultSwitches()
	for _, f := range []struct{ v, def *string }{
		{&sw.DPSIDMismatch, &d.DPSIDMismatch}, {&sw.DisabledEnrollment, &d.DisabledEnrollment},
		{&sw.DPSResponseQoS, &d.DPSResponseQoS}, {&sw.CSRCurves, &d.CSRCurves}, {&sw.HubRetain, &d.HubRetain},
		{&sw.HubUnknownTopic, &d.HubUnknownTopic}, {&sw.DPSMaxTLS, &d.DPSMaxTLS}, {&sw.HubMaxTLS, &d.HubMaxTLS},
		{&sw.APIVersions, &d.APIVersions}, {&sw.CSROldAPI, &d.CSROldAPI},
		{&sw.HubCredentialsTopic, &d.HubCredentialsTopic}, {&sw.HubCredentialsResponse, &d.HubCredentialsResponse},
		{&sw.DPSErrorMessageField, &d.DPSErrorMessageField},
	} {
		if *f.v == "" {
			*f.v = *f.def
		}
	}
	if sw.FailedTopicStatus == 0 {
		sw.FailedTopicStatus = d.FailedTopicStatus
	}
	return sw
}

// Config configures a simulator.
type Config struct {
	StateDir    string
	IDScope     string
	DPSHost     string
	DPSAddr     string
	DPSWSAddr   string
	Hubs        []HubConfig
	ControlAddr string
	ESTAddr     string
	// ServerKey is the TLS server key type: "rsa" (default, like Azure) or
	// "ecdsa" (cheaper handshakes for load tests).
	ServerKey string
	// RetryAfter is the retry-after DPS sends with 202 (seconds; the real
	// service sends 3); -1 sends none.
	RetryAfter int
	// AssigningPolls is how many polls answer 202 "assigning" before the
	// 200 result (the real service usually needs one).
	AssigningPolls int
	// PollLimit / PollWindow: DPS polling limit per device (5 per 10 s).
	PollLimit  int
	PollWindow time.Duration
	// TelemetryMax bounds recorded telemetry (oldest dropped).
	TelemetryMax int
	// IssuedValidity is the default lifetime of certificates issued for
	// the DPS csr field and EST.
	IssuedValidity time.Duration
	Switches       Switches
	Logger         *slog.Logger
	// ESTClientCAs are extra CAs whose certificates may enroll over EST
	// (e.g. the factory station CA of the jig).
	ESTClientCAs []*x509.Certificate
	// ESTHandler, when set, is mounted at the root of the EST listener.
	// It gets the simulator so it can sign with the issuing CA.
	ESTHandler func(*Sim) http.Handler
}

// Ready is the JSON line devid-sim prints when it is ready (team contract).
type Ready struct {
	IDScope    string        `json:"id_scope"`
	DPS        ReadyEndpoint `json:"dps"`
	Hubs       []ReadyHub    `json:"hubs"`
	ControlURL string        `json:"control_url"`
	ESTURL     string        `json:"est_url"`
	CRLURL     string        `json:"crl_url"`
	ServerCA   string        `json:"server_ca"`
	IssuingCA  string        `json:"issuing_ca"`
	// Added fields (the contract allows more).
	IssuingChain string `json:"issuing_chain"`
	StateDir     string `json:"state_dir"`
	PID          int    `json:"pid"`
}

// ReadyEndpoint is the DPS part of the ready line.
type ReadyEndpoint struct {
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
}

// ReadyHub is one hub in the ready line.
type ReadyHub struct {
	Name   string `json:"name"`
	Host   string `json:"host"`
	Addr   string `json:"addr"`
	WSAddr string `json:"ws_addr"`
}

// Sim is a running simulator.
type Sim struct {
	cfg    Config
	log    *slog.Logger
	PKI    *PKI
	st     *store
	broker *mqtt.Server
	ready  Ready

	mu       sync.Mutex
	groups   map[string]*Enrollment
	indiv    map[string]*Enrollment // by lower-case registration id
	regs     map[string]*Registration
	devices  map[string]*DeviceRecord // key hub + "/" + deviceId
	revoked  map[string]revokedCert   // by SHA-256 thumbprint
	hubs     []*HubConfig
	crlNum   int64
	pollHist map[string][]time.Time
	regHist  []time.Time  // register requests in the last minute (RegistrationsPerMinute)
	cmu      sync.RWMutex // guards conns; never take s.mu while holding it
	conns    map[*mqtt.Client]*conn
	pending  map[*mqtt.Client]*conn  // between CONNECT and authentication
	online   map[string]*mqtt.Client // hub/device -> live client
	methods  map[string]chan methodResult
	c2d      map[string]*c2dFlight
	faults   *faultSet
	telCond  *sync.Cond

	listeners []net.Listener
	httpSrvs  []*http.Server
	closed    atomic.Bool
}

type revokedCert struct {
	SHA256    string `json:"sha256"`
	Serial    string `json:"serial"` // hex
	Issuer    string `json:"issuer"`
	Subject   string `json:"subject"`
	RevokedAt string `json:"revokedAt"`
	IssuedBy  bool   `json:"issuedBySim"`        // issued by the simulator's issuing CA (listed in the CRL)
	IssuerCA  string `json:"issuerCA,omitempty"` // base64 DER of the CA that signed the CRL (revoke only what it issued)
}

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
}

type methodResult struct {
	status  int
	payload []byte
}

// Start opens the state, creates the PKI on first start, starts every
// listener and returns when all are accepting.
func Start(cfg Config) (*Sim, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("state dir is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	// The directory holds CA keys: tighten it if it already existed wider.
	if fi, err := os.Stat(cfg.StateDir); err != nil {
		return nil, err
	} else if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir %s is mode %o and cannot be made 0700: %w", cfg.StateDir, fi.Mode().Perm(), err)
		}
	}
	cfg.Switches = withDefaults(cfg.Switches)
	if cfg.IDScope == "" {
		cfg.IDScope = "0ne0000SIM1"
	}
	if cfg.DPSHost == "" {
		cfg.DPSHost = "localhost"
	}
	switch cfg.ServerKey {
	case "":
		cfg.ServerKey = "rsa"
	case "rsa", "ecdsa":
	default:
		return nil, fmt.Errorf("server key type %q is not rsa or ecdsa", cfg.ServerKey)
	}
	if cfg.RetryAfter < -1 {
		return nil, fmt.Errorf("retry-after %d: want seconds >= 0, or -1 to omit it", cfg.RetryAfter)
	}
	if cfg.AssigningPolls < 0 {
		cfg.AssigningPolls = 0
	}
	if cfg.PollLimit == 0 {
		cfg.PollLimit = 5
	}
	if cfg.PollWindow == 0 {
		cfg.PollWindow = 10 * time.Second
	}
	if cfg.TelemetryMax == 0 {
		cfg.TelemetryMax = 100000
	}
	if cfg.IssuedValidity == 0 {
		cfg.IssuedValidity = 30 * 24 * time.Hour
	}
	if len(cfg.Hubs) == 0 {
		cfg.Hubs = []HubConfig{{Name: "sim-hub-1"}}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	for _, a := range []*string{&cfg.DPSAddr, &cfg.DPSWSAddr, &cfg.ControlAddr, &cfg.ESTAddr} {
		if *a == "" {
			*a = "127.0.0.1:0"
		}
	}
	names := []string{cfg.DPSHost, "localhost", "127.0.0.1", "::1"}
	for i := range cfg.Hubs {
		h := &cfg.Hubs[i]
		if h.Host == "" {
			h.Host = h.Name + ".azure-devices.net"
		}
		if h.Addr == "" {
			h.Addr = "127.0.0.1:0"
		}
		if h.WSAddr == "" {
			h.WSAddr = "127.0.0.1:0"
		}
		if h.AllocationWeight == 0 {
			h.AllocationWeight = 1
		}
		names = append(names, h.Host)
	}
	s := &Sim{
		cfg:      cfg,
		log:      cfg.Logger,
		groups:   map[string]*Enrollment{},
		indiv:    map[string]*Enrollment{},
		regs:     map[string]*Registration{},
		devices:  map[string]*DeviceRecord{},
		revoked:  map[string]revokedCert{},
		pollHist: map[string][]time.Time{},
		conns:    map[*mqtt.Client]*conn{},
		pending:  map[*mqtt.Client]*conn{},
		online:   map[string]*mqtt.Client{},
		methods:  map[string]chan methodResult{},
		faults:   newFaultSet(),
	}
	s.telCond = sync.NewCond(&sync.Mutex{})
	for i := range cfg.Hubs {
		h := cfg.Hubs[i]
		s.hubs = append(s.hubs, &h)
	}
	var err error
	if s.PKI, err = LoadOrCreatePKI(cfg.StateDir, names, cfg.ServerKey); err != nil {
		return nil, fmt.Errorf("PKI: %w", err)
	}
	if s.st, err = openStore(cfg.StateDir); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		s.st.close()
		return nil, fmt.Errorf("load state: %w", err)
	}
	if err := s.startBroker(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.startHTTP(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Ready returns the ready-line data.
func (s *Sim) Ready() Ready { return s.ready }

// Config returns the effective configuration.
func (s *Sim) Config() Config { return s.cfg }

// Close stops every listener and closes the state database.
func (s *Sim) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, h := range s.httpSrvs {
		_ = h.Shutdown(ctx)
	}
	if s.broker != nil {
		_ = s.broker.Close()
	}
	for _, l := range s.listeners {
		_ = l.Close()
	}
	s.telCond.L.Lock()
	s.telCond.Broadcast()
	s.telCond.L.Unlock()
	if s.st != nil {
		return s.st.close()
	}
	return nil
}

func (s *Sim) load() error {
	if err := s.st.each(bktGroups, func(k, v []byte) error {
		e := &Enrollment{}
		if err := json.Unmarshal(v, e); err != nil {
			return fmt.Errorf("enrollment group %s: %w", k, err)
		}
		if err := e.prepare(); err != nil {
			return fmt.Errorf("enrollment group %s: %w", k, err)
		}
		s.groups[e.EnrollmentGroupID] = e
		return nil
	}); err != nil {
		return err
	}
	if err := s.st.each(bktEnrollments, func(k, v []byte) error {
		e := &Enrollment{}
		if err := json.Unmarshal(v, e); err != nil {
			return fmt.Errorf("enrollment %s: %w", k, err)
		}
		if err := e.prepare(); err != nil {
			return fmt.Errorf("enrollment %s: %w", k, err)
		}
		s.indiv[strings.ToLower(e.RegistrationID)] = e
		return nil
	}); err != nil {
		return err
	}
	if err := s.st.each(bktRegs, func(k, v []byte) error {
		r := &Registration{}
		if err := json.Unmarshal(v, r); err != nil {
			return fmt.Errorf("registration %s: %w", k, err)
		}
		s.regs[string(k)] = r
		return nil
	}); err != nil {
		return err
	}
	if err := s.st.each(bktDevices, func(k, v []byte) error {
		d := &DeviceRecord{}
		if err := json.Unmarshal(v, d); err != nil {
			return fmt.Errorf("device %s: %w", k, err)
		}
		d.Device.ConnectionState = "Disconnected"
		s.devices[string(k)] = d
		return nil
	}); err != nil {
		return err
	}
	if err := s.st.each(bktRevoked, func(k, v []byte) error {
		var r revokedCert
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("revoked %s: %w", k, err)
		}
		s.revoked[string(k)] = r
		return nil
	}); err != nil {
		return err
	}
	if b := s.st.getMeta("crlNumber"); b != nil {
		fmt.Sscan(string(b), &s.crlNum)
	}
	if b := s.st.getMeta("hubs"); b != nil {
		// Allocation settings changed through the control plane survive restarts.
		var saved []HubConfig
		if json.Unmarshal(b, &saved) == nil {
			for _, sv := range saved {
				if h := s.hubByName(sv.Name); h != nil {
					h.AllocationWeight, h.ApplyAllocationPolicy, h.LatencyMs = sv.AllocationWeight, sv.ApplyAllocationPolicy, sv.LatencyMs
				}
			}
		}
	}
	return nil
}

func (s *Sim) hubByName(name string) *HubConfig {
	for _, h := range s.hubs {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func (s *Sim) hubByHost(host string) *HubConfig {
	for _, h := range s.hubs {
		if strings.EqualFold(h.Host, host) {
			return h
		}
	}
	return nil
}

// tlsConfig builds the server TLS config for one endpoint. Client
// certificates are required but verified by the simulator itself: DPS
// decides per enrollment, and an untrusted device must see DPS's 401, not
// a TLS alert. No acceptable-CA list is sent, so Go clients always send
// their certificate.
func (s *Sim) tlsConfig(maxVer string, requireClientCert bool) *tls.Config {
	c := &tls.Config{
		Certificates: []tls.Certificate{s.PKI.ServerCert},
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequireAnyClientCert,
	}
	if !requireClientCert {
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	if maxVer == "1.3" {
		c.MaxVersion = tls.VersionTLS13
	}
	if s.cfg.Switches.RequireSNI {
		c.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if hi.ServerName == "" {
				return nil, errors.New("client sent no SNI")
			}
			return nil, nil
		}
	}
	return c
}

func (s *Sim) listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s.listeners = append(s.listeners, l)
	return l, nil
}

const (
	roleDPS      = "dps"
	listenerDPS  = "dps"
	hubPrefixLst = "hub:"
)

func (s *Sim) startBroker() error {
	capab := mqtt.NewDefaultServerCapabilities()
	capab.MaximumQos = 2              // so QoS 2 publishes reach the hook and can be refused
	capab.MaximumPacketSize = 1 << 20 // hard cap; service limits are checked in hooks
	// The simulator writes to clients directly (sendTo); mochi's per-client
	// outbound queue is unused, so keep it small: it costs 8 bytes a slot
	// per connection.
	capab.MaximumClientWritesPending = 64
	capab.ReceiveMaximum = 1024
	capab.MaximumInflight = 1024
	capab.Compatibilities.ObscureNotAuthorized = false
	brokerLog := slog.New(&quietHandler{next: s.log.Handler()})
	s.broker = mqtt.New(&mqtt.Options{Capabilities: capab, Logger: brokerLog, InlineClient: false})
	if err := s.broker.AddHook(&hook{sim: s}, nil); err != nil {
		return err
	}
	// DPS TCP/TLS.
	l, err := s.listen(s.cfg.DPSAddr)
	if err != nil {
		return fmt.Errorf("DPS listener %s: %w", s.cfg.DPSAddr, err)
	}
	s.ready.DPS.Addr = l.Addr().String()
	if err := s.broker.AddListener(listeners.NewNet(listenerDPS, tls.NewListener(l, s.tlsConfig(s.cfg.Switches.DPSMaxTLS, true)))); err != nil {
		return err
	}
	wl, err := s.listen(s.cfg.DPSWSAddr)
	if err != nil {
		return fmt.Errorf("DPS websocket listener %s: %w", s.cfg.DPSWSAddr, err)
	}
	s.ready.DPS.WSAddr = wl.Addr().String()
	if err := s.broker.AddListener(newWSListener(listenerDPS+"-ws", wl, s.tlsConfig(s.cfg.Switches.DPSMaxTLS, true))); err != nil {
		return err
	}
	s.ready.DPS.Host = s.cfg.DPSHost
	for _, h := range s.hubs {
		l, err := s.listen(h.Addr)
		if err != nil {
			return fmt.Errorf("hub %s listener %s: %w", h.Name, h.Addr, err)
		}
		h.Addr = l.Addr().String()
		if err := s.broker.AddListener(listeners.NewNet(hubPrefixLst+h.Name, tls.NewListener(l, s.tlsConfig(s.cfg.Switches.HubMaxTLS, true)))); err != nil {
			return err
		}
		wl, err := s.listen(h.WSAddr)
		if err != nil {
			return fmt.Errorf("hub %s websocket listener %s: %w", h.Name, h.WSAddr, err)
		}
		h.WSAddr = wl.Addr().String()
		if err := s.broker.AddListener(newWSListener(hubPrefixLst+h.Name+"-ws", wl, s.tlsConfig(s.cfg.Switches.HubMaxTLS, true))); err != nil {
			return err
		}
		s.ready.Hubs = append(s.ready.Hubs, ReadyHub{Name: h.Name, Host: h.Host, Addr: h.Addr, WSAddr: h.WSAddr})
	}
	s.ready.IDScope = s.cfg.IDScope
	return s.broker.Serve()
}

// roleOf maps a listener ID to "dps" or a hub name.
func roleOf(listener string) string {
	listener = strings.TrimSuffix(listener, "-ws")
	if strings.HasPrefix(listener, hubPrefixLst) {
		return strings.TrimPrefix(listener, hubPrefixLst)
	}
	return roleDPS
}

// quietHandler drops mochi's per-disconnect EOF warnings and other
// expected connection-level noise.
type quietHandler struct{ next slog.Handler }

func (q *quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && q.next.Enabled(ctx, l)
}

func (q *quietHandler) Handle(ctx context.Context, r slog.Record) error {
	noisy := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			if e, ok := a.Value.Any().(error); ok && (errors.Is(e, io.EOF) || errors.Is(e, net.ErrClosed) || errors.Is(e, io.ErrUnexpectedEOF)) {
				noisy = true
			}
			v := a.Value.String()
			if strings.Contains(v, "EOF") || strings.Contains(v, "use of closed network connection") ||
				strings.Contains(v, "connection reset") || strings.Contains(v, "tls:") || strings.Contains(v, "not authorized") ||
				strings.Contains(v, "i/o timeout") || strings.Contains(v, "broken pipe") || strings.Contains(v, "simulator:") {
				noisy = true
			}
		}
		return true
	})
	// Connection-establishment failures are logged by mochi with an empty
	// message; the simulator logs its own reason for each refusal.
	if noisy || r.Message == "error processing packet" || r.Message == "" {
		return nil
	}
	return q.next.Handle(ctx, r)
}

func (q *quietHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &quietHandler{q.next.WithAttrs(a)}
}
func (q *quietHandler) WithGroup(n string) slog.Handler { return &quietHandler{q.next.WithGroup(n)} }

// peerState returns the TLS state of a client connection.
func peerState(c net.Conn) (tls.ConnectionState, bool) {
	type stater interface{ ConnectionState() tls.ConnectionState }
	if st, ok := c.(stater); ok {
		return st.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// sendTo delivers one PUBLISH to exactly one client (the services never
// fan out: every device's response topic is private to its connection).
func (s *Sim) sendTo(cl *mqtt.Client, topic string, payload []byte, qos byte) (uint16, error) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
		Created:     time.Now().Unix(),
	}
	if qos > 0 {
		// The simulator tracks its own QoS 1 deliveries (PUBACKs are seen
		// in OnPacketRead): mochi's inflight store mixes both directions'
		// packet identifiers, which MQTT keeps independent.
		id, err := cl.NextPacketID()
		if err != nil {
			return 0, err
		}
		pk.PacketID = uint16(id)
	}
	return pk.PacketID, cl.WritePacket(pk)
}

// subscribedQoS returns the granted QoS of filter for cl.
func subscribedQoS(cl *mqtt.Client, filter string) (byte, bool) {
	sub, ok := cl.State.Subscriptions.Get(filter)
	if !ok {
		return 0, false
	}
	q := sub.Qos
	if q > 1 {
		q = 1
	}
	return q, true
}

func (s *Sim) connOf(cl *mqtt.Client) *conn {
	s.cmu.RLock()
	defer s.cmu.RUnlock()
	return s.conns[cl]
}
