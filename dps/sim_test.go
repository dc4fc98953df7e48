package dps

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
	"devid/simulator/simtest"
)

// These tests run the real devid-sim binary (simulator/simtest) and talk
// to it over loopback TLS, exactly as a device talks to Azure.

// fakeClock is a virtual clock: Sleep returns at once and moves Now, so
// retry-after and backoff are checked without waiting on the wall clock.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// rig is a simulator with one enrolled device CA.
type rig struct {
	sim   *simtest.Sim
	ca    *testCA
	roots []*x509.Certificate
}

func newRig(t testing.TB, opts ...simtest.Option) *rig {
	t.Helper()
	sim := simtest.Start(t, opts...)
	pemData, err := os.ReadFile(sim.Ready.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ParseTrustBundle(pemData)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sim: sim, ca: newTestCA(t, "devid test device CA"), roots: roots}
	sim.EnrollGroup(t, "dps-tests", r.ca.cert, simtest.IssueCertificates())
	return r
}

func (r *rig) network() Network {
	return Network{Resolve: r.sim.Resolve(), TrustBundle: r.roots}
}

func (r *rig) wsNetwork() Network {
	m := map[string]string{r.sim.Ready.DPS.Host: r.sim.Ready.DPS.WSAddr}
	for _, h := range r.sim.Ready.Hubs {
		m[h.Host] = h.WSAddr
	}
	return Network{Resolve: m, TrustBundle: r.roots, WebSocket: true}
}

// config is a registration on clk's virtual time (nil: real time).
func (r *rig) config(cred tls.Certificate, clk *fakeClock) Config {
	cfg := Config{
		Endpoint:    r.sim.Ready.DPS.Host,
		IDScope:     r.sim.Ready.IDScope,
		Certificate: cred,
		Network:     r.network(),
		Rand:        func() float64 { return 0.5 },
		Timeout:     30 * time.Second,
	}
	if clk != nil {
		cfg.Now, cfg.Sleep = clk.Now, clk.Sleep
	}
	return cfg
}

func (r *rig) hubConfig(res *Result, cred tls.Certificate) HubConfig {
	return HubConfig{
		Host:        res.AssignedHub,
		DeviceID:    res.DeviceID,
		Certificate: cred,
		Network:     r.network(),
		Backoff:     Backoff{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	}
}

func (r *rig) register(t testing.TB, id string) (*Result, tls.Certificate) {
	t.Helper()
	cred := r.ca.credential(t, id)
	res, err := Register(context.Background(), r.config(cred, newFakeClock()))
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return res, cred
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// renewThroughHub requests an operational certificate over the hub's
// credentials topic and proves it by connecting with it.
func renewThroughHub(t *testing.T, r *rig, id string) {
	t.Helper()
	res, cred := r.register(t, id)
	hc := r.hubConfig(res, cred)
	hc.CertificateRenewal = true
	h, err := ConnectHub(context.Background(), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chain, err := h.RequestCertificate(ctx, csr)
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].Subject.CommonName != id || !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatalf("issued %v", chain[0].Subject)
	}
	if _, err := h.RequestCertificate(ctx, mustCSR(t, "someone-else")); !errors.Is(err, ErrConfig) {
		t.Errorf("CSR for another device: %v", err)
	}
	issued := tlsCert(key, chain...)
	if len(chain) > 1 {
		issued = tlsCert(key, chain[:len(chain)-1]...) // the root is the service's business
	}
	h.Close()
	nh, err := ConnectHub(context.Background(), r.hubConfig(res, issued))
	if err != nil {
		t.Fatalf("hub with the renewed certificate: %v", err)
	}
	nh.Close()
}

func TestSim(t *testing.T) {
	t.Parallel()
	r := newRig(t)

	t.Run("HappyPathAndHub", func(t *testing.T) {
		t.Parallel()
		res, cred := r.register(t, "dev-happy")
		if res.AssignedHub != r.sim.Hub("").Host || res.DeviceID != "dev-happy" || res.State.Status != StatusAssigned ||
			res.State.X509 == nil || res.State.X509.EnrollmentGroupID != "dps-tests" || res.RoundTrips < 1 {
			t.Fatalf("result %+v state %+v", res, res.State)
		}
		if st := r.sim.RegistrationState(t, "dev-happy"); st["status"] != "assigned" {
			t.Errorf("sim registration state %v", st)
		}
		c2d := make(chan *C2DMessage, 4)
		desired := make(chan DesiredUpdate, 8)
		hc := r.hubConfig(res, cred)
		hc.OnC2D = func(m *C2DMessage) { c2d <- m }
		hc.OnDesired = func(u DesiredUpdate) { desired <- u }
		hc.Methods = map[string]MethodHandler{
			"reboot": func(_ context.Context, req MethodRequest) (int, []byte) {
				return 200, []byte(`{"ok":true,"got":` + string(req.Payload) + `}`)
			},
			"boom": func(context.Context, MethodRequest) (int, []byte) { panic("handler bug") },
		}
		h, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if u := wait(t, desired, "initial desired"); !u.Full {
			t.Errorf("first desired update is not the full document: %+v", u)
		}

		// Telemetry arrives exactly as sent, properties included.
		msg := &Message{
			Payload:         []byte(`{"temp":21.5,"text":"a&b=c ü"}`),
			MessageID:       "m-1",
			CorrelationID:   "c-1",
			ContentType:     "application/json",
			ContentEncoding: "utf-8",
			Properties:      map[string]string{"alarm": "true", "path": "/a b?c=d&e", "plus": "1+1", "empty": "", "ünï": "✓"},
		}
		if err := h.SendTelemetry(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		recs := r.sim.WaitTelemetry(t, "dev-happy", 1, 10*time.Second)
		got := recs[0]
		if got.Body != string(msg.Payload) || got.QoS != 1 {
			t.Errorf("body %q qos %d", got.Body, got.QoS)
		}
		wantSys := map[string]string{"messageId": "m-1", "correlationId": "c-1", "contentType": "application/json", "contentEncoding": "utf-8"}
		for k, v := range wantSys {
			if got.SystemProperties[k] != v {
				t.Errorf("system property %s = %q, want %q (all %v)", k, got.SystemProperties[k], v, got.SystemProperties)
			}
		}
		if fmt.Sprint(got.ApplicationProperties) != fmt.Sprint(msg.Properties) {
			t.Errorf("application properties\n got %v\nwant %v", got.ApplicationProperties, msg.Properties)
		}

		// Twin: reported patch, then GET sees it.
		v, err := h.UpdateReported(context.Background(), map[string]any{"fw": "1.0.0", "n": 3})
		if err != nil || v <= 0 {
			t.Fatalf("reported patch: v=%d %v", v, err)
		}
		tw, err := h.GetTwin(context.Background())
		if err != nil || !strings.Contains(string(tw.Reported), `"fw":"1.0.0"`) || tw.ReportedVersion != v {
			t.Fatalf("twin get: %+v %v", tw, err)
		}

		// Desired patch from the service side.
		r.sim.MustDo("PATCH", "/twins/dev-happy?api-version=2021-04-12", map[string]any{"properties": map[string]any{"desired": map[string]any{"interval": 7}}}, nil)
		for {
			u := wait(t, desired, "desired patch")
			if strings.Contains(string(u.Patch), `"interval":7`) && !u.Full {
				break
			}
		}

		// Direct method.
		var mres struct {
			Status  int             `json:"status"`
			Payload json.RawMessage `json:"payload"`
		}
		r.sim.MustDo("POST", "/twins/dev-happy/methods?api-version=2021-04-12",
			map[string]any{"methodName": "reboot", "payload": map[string]int{"delay": 1}, "responseTimeoutInSeconds": 10}, &mres)
		if mres.Status != 200 || !strings.Contains(string(mres.Payload), `"delay":1`) {
			t.Errorf("method result %d %s", mres.Status, mres.Payload)
		}
		// Unknown method: 501, not silence.
		r.sim.MustDo("POST", "/twins/dev-happy/methods?api-version=2021-04-12",
			map[string]any{"methodName": "nope", "responseTimeoutInSeconds": 10}, &mres)
		if mres.Status != 501 {
			t.Errorf("unknown method status %d", mres.Status)
		}
		// A panicking handler answers 500 and the client lives on.
		r.sim.MustDo("POST", "/twins/dev-happy/methods?api-version=2021-04-12",
			map[string]any{"methodName": "boom", "responseTimeoutInSeconds": 10}, &mres)
		if mres.Status != 500 {
			t.Errorf("panicking method status %d", mres.Status)
		}

		// C2D with properties.
		mid := r.sim.SendC2D(t, "", "dev-happy", "hello device", map[string]string{"k": "v w/x", "flag": "1"})
		m := wait(t, c2d, "c2d")
		if string(m.Payload) != "hello device" || (mid != "" && m.MessageID != mid) {
			t.Errorf("c2d %+v (want mid %q)", m, mid)
		}
		if v, _ := m.Properties.Get("k"); v != "v w/x" {
			t.Errorf("c2d props %+v", m.Properties)
		}
		if s := h.Stats(); s.Sent != 1 || s.C2D != 1 || s.Methods != 3 {
			t.Errorf("stats %+v", s)
		}

		// The hub kicks the device: the client says so (a retryable
		// error), and a new connection keeps sending.
		r.sim.MustDo("POST", "/sim/disconnect", map[string]string{"id": "dev-happy"}, nil)
		wait(t, h.Done(), "Done after the kick")
		if err := h.Err(); !Retryable(err) {
			t.Errorf("Err() after a kick = %v, want a retryable error", err)
		}
		h2, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h2.Close()
		if u := wait(t, desired, "desired after reconnecting"); !u.Full {
			t.Errorf("first desired update on the new connection is not the full document: %+v", u)
		}
		if err := h2.SendTelemetry(context.Background(), &Message{Payload: []byte("after kick")}); err != nil {
			t.Fatal(err)
		}
		r.sim.WaitTelemetry(t, "dev-happy", 2, 10*time.Second)
	})

	t.Run("ChainWithIntermediate", func(t *testing.T) {
		t.Parallel()
		// A group anchored on a root: DPS can only verify the leaf if the
		// device sends the intermediate too.
		ca := simtest.NewDeviceCA(t)
		r.sim.EnrollGroup(t, "root-anchored", ca.Root)
		dev := ca.Issue(t, "dev-ica")
		cred := tlsCert(dev.Key, dev.Chain...)
		res, err := Register(context.Background(), r.config(cred, newFakeClock()))
		if err != nil {
			t.Fatal(err)
		}
		h, err := ConnectHub(context.Background(), r.hubConfig(res, cred))
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		// Without the intermediate DPS cannot chain the leaf.
		_, err = Register(context.Background(), r.config(tlsCert(dev.Key, dev.Chain[0]), newFakeClock()))
		if !errors.Is(err, ErrNotAuthorized) {
			t.Errorf("leaf-only chain: got %v, want not authorized", err)
		}
	})

	t.Run("CustomPayloadAndClientVersion", func(t *testing.T) {
		t.Parallel()
		cfg := r.config(r.ca.credential(t, "dev-payload"), newFakeClock())
		cfg.Payload = json.RawMessage(`{"modelId":"dtmi:com:example:thermostat;1","site":"hall 3"}`)
		cfg.ClientVersion = "devid/0.1 (linux; arm64)"
		res, err := Register(context.Background(), cfg)
		if err != nil || res.DeviceID != "dev-payload" {
			t.Fatalf("register with payload: %+v %v", res, err)
		}
	})

	t.Run("HubCertificateRenewal", func(t *testing.T) {
		t.Parallel()
		renewThroughHub(t, r, "dev-renew")
	})

	t.Run("NoResponseReconnects", func(t *testing.T) {
		t.Parallel()
		id := "dev-slow"
		fid := r.sim.SetFault(t, simtest.Fault{Scope: "dps", DeviceID: id, Ops: []string{"register"}, DelayMs: 3000})
		cfg := r.config(r.ca.credential(t, id), nil)
		cfg.ResponseTimeout = 300 * time.Millisecond
		cfg.Backoff = Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
		type out struct {
			res *Result
			err error
		}
		done := make(chan out, 1)
		go func() {
			res, err := Register(context.Background(), cfg)
			done <- out{res, err}
		}()
		// Once the simulator has sat on two register requests, let it
		// answer again.
		n := 0
		if !clocktest.Poll(20*time.Second, func() bool {
			var faults []struct {
				ID      string `json:"id"`
				Applied int    `json:"applied"`
			}
			r.sim.MustDo("GET", "/sim/faults", nil, &faults)
			for _, f := range faults {
				if f.ID == fid {
					n = f.Applied
				}
			}
			return n >= 2
		}) {
			t.Fatalf("register requests never reached the slow simulator (applied %d)", n)
		}
		r.sim.MustDo("DELETE", "/sim/faults/"+fid, nil, nil)
		o := wait(t, done, "register after the delay fault")
		if o.err != nil || o.res.Connects < 2 {
			t.Fatalf("got %+v %v, want success after reconnecting", o.res, o.err)
		}
	})

	t.Run("Throttled429RetryAfter", func(t *testing.T) {
		t.Parallel()
		id := "dev-429"
		r.sim.SetFault(t, simtest.Fault{Scope: "dps", DeviceID: id, Ops: []string{"register"}, Status: 429, RetryAfter: 7, Count: 2})
		clk := newFakeClock()
		cred := r.ca.credential(t, id)
		res, err := Register(context.Background(), r.config(cred, clk))
		if err != nil {
			t.Fatal(err)
		}
		sleeps := clk.Sleeps()
		if len(sleeps) < 2 || sleeps[0] < 7*time.Second || sleeps[1] < 7*time.Second {
			t.Errorf("retry-after 7 not honoured: sleeps %v", sleeps)
		}
		if res.RoundTrips < 3 {
			t.Errorf("round trips %d, want >= 3 (two 429s)", res.RoundTrips)
		}
	})

	t.Run("ServerError5xxBackoff", func(t *testing.T) {
		t.Parallel()
		id := "dev-503"
		r.sim.SetFault(t, simtest.Fault{Scope: "dps", DeviceID: id, Status: 503, Count: 3})
		clk := newFakeClock()
		cfg := r.config(r.ca.credential(t, id), clk)
		cfg.Rand = func() float64 { return 0.999 }
		if _, err := Register(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		// Full jitter with rand≈1: ~1 s, ~2 s, ~4 s.
		s := clk.Sleeps()
		if len(s) < 3 || s[0] > time.Second || s[1] > 2*time.Second || s[2] > 4*time.Second || s[2] < 3*time.Second {
			t.Errorf("backoff sleeps %v", s)
		}
	})

	t.Run("ThrottledUntilDeadline", func(t *testing.T) {
		t.Parallel()
		id := "dev-429-forever"
		r.sim.SetFault(t, simtest.Fault{Scope: "dps", DeviceID: id, Status: 429, RetryAfter: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		cfg := r.config(r.ca.credential(t, id), newFakeClock())
		// A real clock here: the deadline is what must stop it.
		cfg.Now, cfg.Sleep = nil, nil
		cfg.Backoff = Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
		cfg.MaxRetryAfter = 100 * time.Millisecond
		_, err := Register(ctx, cfg)
		var se *StatusError
		if !errors.Is(err, ErrTimeout) || !errors.As(err, &se) || se.Status != 429 || !errors.Is(err, ErrThrottled) {
			t.Errorf("got %v, want a timeout carrying the last 429", err)
		}
	})

	t.Run("DisabledEnrollment", func(t *testing.T) {
		t.Parallel()
		ca := newTestCA(t, "disabled group CA")
		r.sim.EnrollGroup(t, "disabled-group", ca.cert, simtest.Disabled())
		_, err := Register(context.Background(), r.config(ca.credential(t, "dev-disabled"), newFakeClock()))
		var re *RegistrationError
		if !errors.Is(err, ErrDisabled) || !errors.As(err, &re) || Retryable(err) {
			t.Errorf("got %v, want disabled registration", err)
		}
	})

	t.Run("FailedAllocation", func(t *testing.T) {
		t.Parallel()
		// The enrollment names a hub that is not linked: DPS finishes the
		// operation with status "failed" (docs/field-problems.md, row 11: stop, and say why).
		ca := newTestCA(t, "failing group CA")
		r.sim.EnrollGroup(t, "failing-group", ca.cert, simtest.Policy("static"), simtest.LinkedHubs("unlinked-hub.azure-devices.net"))
		_, err := Register(context.Background(), r.config(ca.credential(t, "dev-failed"), newFakeClock()))
		var re *RegistrationError
		if !errors.Is(err, ErrFailed) || errors.Is(err, ErrDisabled) || !errors.As(err, &re) || Retryable(err) {
			t.Fatalf("got %v, want a terminal failed registration", err)
		}
		if re.Status != StatusFailed || re.ErrorCode == 0 || re.ErrorMessage == "" {
			t.Errorf("failed registration lacks errorCode/errorMessage: %+v", re)
		}
	})

	t.Run("UnknownDevice", func(t *testing.T) {
		t.Parallel()
		stranger := newTestCA(t, "never enrolled CA")
		_, err := Register(context.Background(), r.config(stranger.credential(t, "dev-unknown"), newFakeClock()))
		if !errors.Is(err, ErrNotAuthorized) || Retryable(err) {
			t.Fatalf("got %v, want a terminal not-authorized error", err)
		}
		var se *StatusError
		if errors.As(err, &se) && (se.Status != 401 || se.ErrorCode != 401002 || se.TrackingID == "") {
			t.Errorf("status error lacks detail: %+v", se)
		}
	})

	t.Run("WrongTrustBundle", func(t *testing.T) {
		t.Parallel()
		cfg := r.config(r.ca.credential(t, "dev-wrongca"), newFakeClock())
		cfg.Network.TrustBundle = nil // the embedded Azure roots do not know the simulator
		_, err := Register(context.Background(), cfg)
		var te *TLSError
		if !errors.As(err, &te) || te.Kind != TLSUnknownAuthority || !te.Interception || Retryable(err) {
			t.Errorf("got %v, want unknown authority with an interception hint", err)
		}
	})

	t.Run("CSRNotIssued", func(t *testing.T) {
		t.Parallel()
		// An enrollment without certificate issuance assigns the device
		// and ignores the CSR: ErrNotIssued, with the assignment.
		ca := simtest.NewDeviceCA(t)
		r.sim.EnrollGroup(t, "no-issuance", ca.Root)
		dev := ca.Issue(t, "dev-no-issuance")
		cfg := r.config(tlsCert(dev.Key, dev.Chain...), newFakeClock())
		key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-no-issuance"}}, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CSR = csr
		res, err := Register(context.Background(), cfg)
		if !errors.Is(err, ErrNotIssued) || res == nil || res.AssignedHub == "" || len(res.IssuedChain) != 0 {
			t.Fatalf("Register with a CSR on an enrollment without issuance: %+v, %v; want the assignment and ErrNotIssued", res, err)
		}
	})

	t.Run("CSRIssuesChain", func(t *testing.T) {
		t.Parallel()
		id := "dev-csr"
		cfg := r.config(r.ca.credential(t, id), newFakeClock())
		key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.CSR = csr
		res, err := Register(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.IssuedChain) == 0 || res.IssuedChain[0].Subject.CommonName != id || !key.PublicKey.Equal(res.IssuedChain[0].PublicKey) {
			t.Fatalf("issued chain %v", res.IssuedChain)
		}
		// The issued credential is accepted by the hub.
		issued := tlsCert(key, res.IssuedChain...)
		if len(res.IssuedChain) > 1 {
			issued = tlsCert(key, res.IssuedChain[:len(res.IssuedChain)-1]...)
		}
		h, err := ConnectHub(context.Background(), r.hubConfig(res, issued))
		if err != nil {
			t.Fatalf("hub with issued certificate: %v", err)
		}
		h.Close()
	})

	t.Run("HubRefusesIdentity", func(t *testing.T) {
		t.Parallel()
		res, cred := r.register(t, "dev-refused")
		hc := r.hubConfig(res, cred)
		h, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		// Disabling the device on the hub drops it; the next connect gets
		// CONNACK 5, which says: re-provision (the agent's reaction is
		// TestHubAuthRefusalReprovisions and its end-to-end twin).
		r.sim.MustDo("POST", "/sim/devices/"+r.sim.Hub("").Name+"/dev-refused/disable", nil, nil)
		wait(t, h.Done(), "Done after the hub dropped the disabled device")
		var ce *ConnackError
		_, err = ConnectHub(context.Background(), hc)
		if !errors.As(err, &ce) || ce.Code != 5 || !errors.Is(err, ErrNotAuthorized) || Retryable(err) {
			t.Errorf("ConnectHub = %v, want CONNACK 5", err)
		}
	})

	t.Run("Proxy", func(t *testing.T) {
		t.Parallel()
		p := startProxy(t, r.sim.Resolve(), "")
		cred := r.ca.credential(t, "dev-proxy")
		cfg := r.config(cred, newFakeClock())
		cfg.Network.Resolve = nil // only the proxy resolves names
		cfg.Network.Proxy = "http://" + p.addr
		res, err := Register(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		hc := r.hubConfig(res, cred)
		hc.Network = cfg.Network
		h, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.SendTelemetry(context.Background(), &Message{Payload: []byte("via proxy"), Properties: map[string]string{"p": "1"}}); err != nil {
			t.Fatal(err)
		}
		if recs := r.sim.WaitTelemetry(t, "dev-proxy", 1, 10*time.Second); recs[0].Body != "via proxy" {
			t.Errorf("telemetry %+v", recs[0])
		}
		targets := strings.Join(p.Targets(), " ")
		if !strings.Contains(targets, r.sim.Ready.DPS.Host+":8883") || !strings.Contains(targets, res.AssignedHub+":8883") {
			t.Errorf("proxy CONNECT targets %q", targets)
		}
	})

	t.Run("WebSockets", func(t *testing.T) {
		t.Parallel()
		cred := r.ca.credential(t, "dev-ws")
		cfg := r.config(cred, newFakeClock())
		cfg.Network = r.wsNetwork()
		res, err := Register(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		hc := r.hubConfig(res, cred)
		hc.Network = r.wsNetwork()
		h, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.SendTelemetry(context.Background(), &Message{Payload: []byte("over ws"), ContentType: "text/plain"}); err != nil {
			t.Fatal(err)
		}
		recs := r.sim.WaitTelemetry(t, "dev-ws", 1, 10*time.Second)
		if recs[0].Body != "over ws" || recs[0].SystemProperties["contentType"] != "text/plain" {
			t.Errorf("telemetry %+v", recs[0])
		}
	})
}

// TestHubCrashMidTelemetry kills the simulator while messages are in
// flight. Every SendTelemetry returns; one that returned nil was
// recorded by the hub, one that failed failed retryably; and sending the
// failed ones again on a new connection, as the agent's queue does,
// delivers every message at least once.
func TestHubCrashMidTelemetry(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	res, cred := r.register(t, "dev-restart")
	hc := r.hubConfig(res, cred)
	h, err := ConnectHub(context.Background(), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu     sync.Mutex
		failed []int
	)
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	send := func(h *Hub) {
		for w := 0; w < 8; w++ { // the agent's window
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					err := h.SendTelemetry(ctx, &Message{Payload: []byte(fmt.Sprint(i)), MessageID: fmt.Sprintf("msg-%d", i)})
					if err != nil {
						if !Retryable(err) {
							t.Errorf("send %d: %v, want a retryable error", i, err)
						}
						mu.Lock()
						failed = append(failed, i)
						mu.Unlock()
					}
				}
			}()
		}
	}
	send(h)
	// Crash the simulator (SIGKILL: no goodbye to anyone) once a third
	// has been acknowledged, then start it again on the same ports.
	if !clocktest.Poll(30*time.Second, func() bool { return h.Stats().Sent >= n/3 }) {
		t.Fatalf("telemetry stalled before the crash: %+v", h.Stats())
	}
	// Slow PUBACKs (the simulator records a message after the delay) so
	// messages are surely in flight, unrecorded, when it dies.
	r.sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: "dev-restart", Ops: []string{"telemetry"}, DelayMs: 500})
	if !clocktest.Poll(30*time.Second, func() bool { return h.Stats().InFlight >= 4 }) {
		t.Fatalf("telemetry stalled before the crash: %+v", h.Stats())
	}
	if err := syscall.Kill(r.sim.Ready.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	wait(t, h.Done(), "Done after the crash")
	if err := h.Err(); !Retryable(err) {
		t.Errorf("Err() after the crash = %v, want a retryable error", err)
	}
	acked := h.Stats().Sent
	r.sim.Restart()
	r.sim.ClearFaults(t) // whether or not the fault survived the crash
	recs := r.sim.Telemetry(t, "dev-restart")
	if int64(len(recs)) < acked {
		t.Errorf("%d messages acknowledged, only %d recorded", acked, len(recs))
	}
	if len(failed) == 0 {
		t.Fatal("no send failed: the crash hit no message in flight")
	}
	t.Logf("%d acknowledged, %d failed before the crash", acked, len(failed))

	// The caller's resend: the failed messages and the ones never tried.
	h2, err := ConnectHub(context.Background(), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	again := make(chan int, n)
	for _, i := range failed {
		again <- i
	}
	for i := range next {
		again <- i
	}
	close(again)
	for i := range again {
		if err := h2.SendTelemetry(ctx, &Message{Payload: []byte(fmt.Sprint(i)), MessageID: fmt.Sprintf("msg-%d", i)}); err != nil {
			t.Fatalf("resend %d: %v", i, err)
		}
	}
	recs = r.sim.WaitTelemetry(t, "dev-restart", n, 20*time.Second)
	seen := map[string]bool{}
	for _, rec := range recs {
		seen[rec.SystemProperties["messageId"]] = true
	}
	for i := 0; i < n; i++ {
		if !seen[fmt.Sprintf("msg-%d", i)] {
			t.Errorf("message %d lost", i)
		}
	}
	t.Logf("%d records for %d messages", len(recs), n)
}

// TestSimVariants runs the simulator with the other side of every
// UNCONFIRMED/CONFLICT switch the client depends on: DPS replies at
// QoS 0, a disabled enrollment answered 401, a failed operation reported
// with an error topic status, TLS 1.3 on both services.
func TestSimVariants(t *testing.T) {
	t.Parallel()
	r := newRig(t, simtest.WithArgs("--dps-response-qos", "0", "--disabled-enrollment", "401",
		"--dps-max-tls", "1.3", "--hub-max-tls", "1.3", "--require-sni",
		// Seven "assigning" answers with retry-after=0; the simulator's own
		// poll quota is off because the client runs on virtual time here.
		"--assigning-polls", "7", "--retry-after", "0", "--poll-limit", "0",
		"--hub-credentials-response", "object"))

	t.Run("HubCertificateRenewalObjectBody", func(t *testing.T) {
		t.Parallel()
		renewThroughHub(t, r, "dev-v-renew")
	})

	t.Run("PollFloor", func(t *testing.T) {
		t.Parallel()
		clk := newFakeClock()
		if _, err := Register(context.Background(), r.config(r.ca.credential(t, "dev-v-floor"), clk)); err != nil {
			t.Fatal(err)
		}
		// retry-after=0 on every 202: still wait max(retry-after, 2 s) (docs/dps.md, retry policy).
		// (The 5-per-10-s limiter may add short waits of its own.)
		floored := 0
		for _, d := range clk.Sleeps() {
			if d >= 2*time.Second {
				floored++
			}
		}
		if floored < 7 {
			t.Errorf("sleeps %v: want a wait of >= 2 s after each of the 7 assigning answers", clk.Sleeps())
		}
	})

	t.Run("PollLimit", func(t *testing.T) {
		t.Parallel()
		clk := newFakeClock()
		cfg := r.config(r.ca.credential(t, "dev-v-polls"), clk)
		cfg.MinPollInterval = -1 // exercise the 5-per-10-s limiter alone
		res, err := Register(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		// register + 8 polls; polls 6..8 must wait for the 10 s window.
		var total time.Duration
		for _, d := range clk.Sleeps() {
			total += d
		}
		if res.RoundTrips != 9 || total < 10*time.Second {
			t.Errorf("round trips %d, virtual time %v (sleeps %v): want 9 and >= 10 s", res.RoundTrips, total, clk.Sleeps())
		}
	})

	t.Run("RegisterAndHubOverTLS13", func(t *testing.T) {
		t.Parallel()
		res, cred := r.register(t, "dev-v-ok")
		h, err := ConnectHub(context.Background(), r.hubConfig(res, cred))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.SendTelemetry(context.Background(), &Message{Payload: []byte("tls13")}); err != nil {
			t.Fatal(err)
		}
		r.sim.WaitTelemetry(t, "dev-v-ok", 1, 10*time.Second)
	})

	t.Run("Disabled401", func(t *testing.T) {
		t.Parallel()
		ca := newTestCA(t, "disabled 401 CA")
		r.sim.EnrollGroup(t, "disabled-401", ca.cert, simtest.Disabled())
		_, err := Register(context.Background(), r.config(ca.credential(t, "dev-v-disabled"), newFakeClock()))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != 401 || !errors.Is(err, ErrNotAuthorized) || Retryable(err) {
			t.Errorf("got %v, want terminal 401", err)
		}
	})

	t.Run("WebSocketThroughProxy", func(t *testing.T) {
		t.Parallel()
		nw := r.wsNetwork()
		p := startProxy(t, nw.Resolve, "")
		nw.Resolve, nw.Proxy = nil, "http://"+p.addr
		cred := r.ca.credential(t, "dev-v-wsproxy")
		cfg := r.config(cred, newFakeClock())
		cfg.Network = nw
		res, err := Register(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		hc := r.hubConfig(res, cred)
		hc.Network = nw
		h, err := ConnectHub(context.Background(), hc)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.SendTelemetry(context.Background(), &Message{Payload: []byte("ws+proxy")}); err != nil {
			t.Fatal(err)
		}
		r.sim.WaitTelemetry(t, "dev-v-wsproxy", 1, 10*time.Second)
		if got := strings.Join(p.Targets(), " "); !strings.Contains(got, ":443") {
			t.Errorf("proxy targets %q, want port 443", got)
		}
	})

	t.Run("KickEndsConnection", func(t *testing.T) {
		t.Parallel()
		res, cred := r.register(t, "dev-v-noreconnect")
		h, err := ConnectHub(context.Background(), r.hubConfig(res, cred))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		r.sim.MustDo("POST", "/sim/disconnect", map[string]string{"id": "dev-v-noreconnect"}, nil)
		select {
		case <-h.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("Done() not closed after the drop")
		}
		if err := h.Err(); !errors.Is(err, ErrClosed) || !Retryable(err) {
			t.Errorf("Err() = %v, want a retryable closed connection", err)
		}
		if err := h.SendTelemetry(context.Background(), &Message{}); err == nil {
			t.Error("send after stop succeeded")
		}
	})
}
