package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// opTimeout bounds one registration or one connection attempt.
const opTimeout = 30 * time.Second

// errLog keeps the first few distinct errors of a phase.
type errLog struct {
	mu   sync.Mutex
	errs []string
	seen map[string]bool
}

func (e *errLog) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := err.Error()
	if e.seen == nil {
		e.seen = map[string]bool{}
	}
	if len(e.errs) < 5 && !e.seen[s] {
		e.seen[s] = true
		e.errs = append(e.errs, s)
	}
}

func dialer(o options, i int) *net.Dialer {
	d := &net.Dialer{Timeout: opTimeout}
	if o.sources > 1 {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(10+i%o.sources))}
	}
	return d
}

// client is a minimal MQTT 3.1.1 client on one TLS connection.
type client struct {
	c   *tls.Conn
	mid uint16
}

func dial(ctx context.Context, d *net.Dialer, addr string, cfg *tls.Config) (*client, error) {
	td := &tls.Dialer{NetDialer: d, Config: cfg}
	nc, err := td.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &client{c: nc.(*tls.Conn)}
	if dl, ok := ctx.Deadline(); ok {
		c.c.SetDeadline(dl)
	}
	return c, nil
}

func (c *client) connect(clientID, username string, clean bool, keepalive uint16) error {
	p := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	p.ProtocolName, p.ProtocolVersion = "MQTT", 4
	p.ClientIdentifier, p.CleanSession, p.Keepalive = clientID, clean, keepalive
	p.UsernameFlag, p.Username = true, username
	if err := p.Write(c.c); err != nil {
		return err
	}
	pk, err := packets.ReadPacket(c.c)
	if err != nil {
		return fmt.Errorf("waiting for CONNACK: %w", err)
	}
	ack, ok := pk.(*packets.ConnackPacket)
	if !ok {
		return fmt.Errorf("expected CONNACK, got %T", pk)
	}
	if ack.ReturnCode != 0 {
		return fmt.Errorf("CONNACK %d", ack.ReturnCode)
	}
	return nil
}

func (c *client) subscribe(filter string) error {
	c.mid++
	p := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	p.MessageID, p.Topics, p.Qoss = c.mid, []string{filter}, []byte{1}
	if err := p.Write(c.c); err != nil {
		return err
	}
	for {
		pk, err := packets.ReadPacket(c.c)
		if err != nil {
			return fmt.Errorf("waiting for SUBACK: %w", err)
		}
		if sa, ok := pk.(*packets.SubackPacket); ok {
			if len(sa.ReturnCodes) != 1 || sa.ReturnCodes[0] > 1 {
				return fmt.Errorf("SUBACK %v", sa.ReturnCodes)
			}
			return nil
		}
	}
}

func (c *client) publish(topic string, qos byte, payload []byte) error {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName, p.Qos, p.Payload = topic, qos, payload
	if qos > 0 {
		c.mid++
		p.MessageID = c.mid
	}
	return p.Write(c.c)
}

// nextPublish returns the next PUBLISH, acking QoS 1.
func (c *client) nextPublish() (*packets.PublishPacket, error) {
	for {
		pk, err := packets.ReadPacket(c.c)
		if err != nil {
			return nil, err
		}
		if p, ok := pk.(*packets.PublishPacket); ok {
			if p.Qos == 1 {
				a := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
				a.MessageID = p.MessageID
				if err := a.Write(c.c); err != nil {
					return nil, err
				}
			}
			return p, nil
		}
	}
}

func (c *client) close() {
	packets.NewControlPacket(packets.Disconnect).Write(c.c)
	c.c.Close()
}

// parallelEach calls do(w, i) for every i in [0, n) from workers
// goroutines (w is the worker's number), stopping early when ctx ends. It
// returns how many indices were started.
func parallelEach(ctx context.Context, n, workers int, do func(w, i int)) (started int) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				do(w, i)
			}
		})
	}
	wg.Wait()
	return min(int(next.Load()), n)
}

type regResult struct {
	ok, failed, notStarted, polls int
	wall                          time.Duration
	lat                           latencies
	errs                          []string
}

// registerAll runs the DPS flow for every device with o.regWorkers in flight.
func registerAll(ctx context.Context, s *sim, devs []*device, o options) regResult {
	var (
		ok, failed, polls atomic.Int64
		mu                sync.Mutex
		lat               latencies
		el                errLog
	)
	start := time.Now()
	started := parallelEach(ctx, len(devs), o.regWorkers, func(w, i int) {
		t0 := time.Now()
		n, err := registerOne(ctx, s, devs[i], o, w)
		polls.Add(int64(n))
		if err != nil {
			failed.Add(1)
			el.add(fmt.Errorf("register %s: %w", devs[i].cn, err))
			return
		}
		ok.Add(1)
		d := time.Since(t0)
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
	})
	wall := time.Since(start)
	return regResult{ok: int(ok.Load()), failed: int(failed.Load()), notStarted: len(devs) - started,
		polls: int(polls.Load()), wall: wall, lat: lat, errs: el.errs}
}

// dpsResponse is the subset of RegistrationOperationStatus the bench reads.
type dpsResponse struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	RegistrationState struct {
		AssignedHub string `json:"assignedHub"`
		DeviceID    string `json:"deviceId"`
	} `json:"registrationState"`
	ErrorCode int    `json:"errorCode"`
	Message   string `json:"message"`
}

// phaseNanos accumulates time per registration step, to show where it goes.
var phaseNanos [5]atomic.Int64

var phaseNames = [5]string{"TLS handshake", "CONNECT→CONNACK", "SUBSCRIBE→SUBACK", "register→first reply", "polls→assigned"}

func registerOne(parent context.Context, s *sim, d *device, o options, w int) (polls int, err error) {
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	t := time.Now()
	step := func(i int) {
		now := time.Now()
		phaseNanos[i].Add(int64(now.Sub(t)))
		t = now
	}
	cfg := &tls.Config{RootCAs: s.roots, ServerName: s.ready.DPS.Host, Certificates: []tls.Certificate{d.cert}, MinVersion: tls.VersionTLS12}
	c, err := dial(ctx, dialer(o, w), s.ready.DPS.Addr, cfg)
	if err != nil {
		return 0, err
	}
	defer c.close()
	step(0)
	user := s.ready.IDScope + "/registrations/" + d.cn + "/api-version=2019-03-31"
	if err := c.connect(d.cn, user, true, 240); err != nil {
		return 0, err
	}
	step(1)
	if err := c.subscribe("$dps/registrations/res/#"); err != nil {
		return 0, err
	}
	step(2)
	first := true
	body, _ := json.Marshal(map[string]string{"registrationId": d.cn})
	if err := c.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", 1, body); err != nil {
		return 0, err
	}
	for {
		p, err := c.nextPublish()
		if err != nil {
			return polls, err
		}
		if first {
			step(3)
			first = false
		}
		status, retryAfter, perr := parseResTopic(p.TopicName)
		if perr != nil {
			return polls, perr
		}
		var r dpsResponse
		if err := json.Unmarshal(p.Payload, &r); err != nil {
			return polls, fmt.Errorf("status %d body %q: %v", status, p.Payload, err)
		}
		switch {
		case status == 200 && r.Status == "assigned":
			d.hub, d.deviceID = r.RegistrationState.AssignedHub, r.RegistrationState.DeviceID
			step(4)
			return polls, nil
		case status == 202 || (status == 200 && (r.Status == "assigning" || r.Status == "unassigned")):
			if o.honourRetryAfter && retryAfter > 0 {
				select {
				case <-time.After(time.Duration(retryAfter) * time.Second):
				case <-ctx.Done():
					return polls, ctx.Err()
				}
			}
			polls++
			topic := "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=" + r.OperationID
			if err := c.publish(topic, 1, nil); err != nil {
				return polls, err
			}
		default:
			return polls, fmt.Errorf("status %d: %s", status, strings.TrimSpace(string(p.Payload)))
		}
	}
}

// parseResTopic reads `$dps/registrations/res/{status}/?$rid=..&retry-after=N`.
func parseResTopic(t string) (status, retryAfter int, err error) {
	rest, ok := strings.CutPrefix(t, "$dps/registrations/res/")
	if !ok {
		return 0, 0, fmt.Errorf("unexpected topic %q", t)
	}
	st, q, _ := strings.Cut(rest, "/?")
	if status, err = strconv.Atoi(st); err != nil {
		return 0, 0, fmt.Errorf("topic %q: status: %v", t, err)
	}
	v, _ := url.ParseQuery(q)
	retryAfter, _ = strconv.Atoi(v.Get("retry-after"))
	return status, retryAfter, nil
}

type connResult struct {
	held, failed int
	wall         time.Duration
	lat          latencies
	errs         []string
	conns        []*client
}

// connectAll opens one hub connection per registered device and keeps it.
func connectAll(ctx context.Context, s *sim, devs []*device, o options) *connResult {
	hubAddr := map[string]string{}
	for _, h := range s.ready.Hubs {
		hubAddr[strings.ToLower(h.Host)] = h.Addr
	}
	var (
		mu    sync.Mutex
		res   = &connResult{}
		el    errLog
		fails atomic.Int64
	)
	start := time.Now()
	parallelEach(ctx, len(devs), o.connWorkers, func(_, i int) {
		d := devs[i]
		if d.hub == "" {
			return
		}
		t0 := time.Now()
		c, err := connectOne(ctx, s, d, hubAddr, o, i)
		if err != nil {
			fails.Add(1)
			el.add(fmt.Errorf("connect %s: %w", d.deviceID, err))
			return
		}
		dt := time.Since(t0)
		mu.Lock()
		res.conns = append(res.conns, c)
		res.lat = append(res.lat, dt)
		mu.Unlock()
	})
	res.wall = time.Since(start)
	res.held = len(res.conns)
	res.failed = int(fails.Load())
	res.errs = el.errs
	return res
}

func connectOne(parent context.Context, s *sim, d *device, hubAddr map[string]string, o options, i int) (*client, error) {
	addr, ok := hubAddr[strings.ToLower(d.hub)]
	if !ok {
		return nil, fmt.Errorf("assigned hub %q is not in the ready line", d.hub)
	}
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	cfg := &tls.Config{RootCAs: s.roots, ServerName: d.hub, Certificates: []tls.Certificate{d.cert}, MinVersion: tls.VersionTLS12}
	c, err := dial(ctx, dialer(o, i), addr, cfg)
	if err != nil {
		return nil, err
	}
	user := d.hub + "/" + d.deviceID + "/?api-version=2021-04-12"
	// Keepalive well above the run time: the bench holds idle connections.
	if err := c.connect(d.deviceID, user, false, 1000); err != nil {
		c.c.Close()
		return nil, err
	}
	c.c.SetDeadline(time.Time{})
	return c, nil
}

// closeAll reports how many held connections are still open, then closes them.
func (r *connResult) closeAll() int {
	var open atomic.Int64
	var wg sync.WaitGroup
	ch := make(chan *client)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for c := range ch {
				c.c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
				_, err := c.c.Read(buf)
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					open.Add(1)
				}
				c.c.Close()
			}
		}()
	}
	for _, c := range r.conns {
		ch <- c
	}
	close(ch)
	wg.Wait()
	return int(open.Load())
}

// enrollGroup creates an X.509 enrollment group on the control plane
// (Azure DPS service REST shape).
func enrollGroup(controlURL, id string, caPEM []byte) error {
	body := map[string]any{
		"enrollmentGroupId": id,
		"attestation": map[string]any{
			"type": "x509",
			"x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]any{"certificate": string(caPEM)}}},
		},
		"provisioningStatus": "enabled",
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPut, controlURL+"/enrollmentGroups/"+url.PathEscape(id)+"?api-version=2021-10-01", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		return fmt.Errorf("PUT enrollmentGroups/%s: %s: %s", id, resp.Status, strings.TrimSpace(buf.String()))
	}
	return nil
}
