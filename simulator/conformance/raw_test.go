package conformance

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// ioWait bounds every single read or write of the raw client. The tests
// wait on packets, not on time; this only stops a hung simulator from
// hanging the test run.
const ioWait = 20 * time.Second

// endpoint is where a raw client dials (addr) and what it calls the server
// (host, used for SNI, certificate verification and the MQTT username).
type endpoint struct {
	host, addr string
}

// rawConn is a bare MQTT 3.1.1 client on a real TLS connection, built from
// paho's packet codec so each test controls every byte it sends.
type rawConn struct {
	t       testing.TB
	conn    net.Conn
	tls     *tls.Conn
	mid     uint16
	pending []*packets.PublishPacket // PUBLISHes that arrived while waiting for an ack
}

// loadPool reads the simulator's server root.
func loadPool(t testing.TB, path string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatalf("no certificate in %s", path)
	}
	return p
}

// dialTLS opens TLS 1.2+ to ep with the given client chain (nil = none) and
// verifies the server against roots under the name ep.host.
func dialTLS(t testing.TB, ep endpoint, roots *x509.CertPool, cert *tls.Certificate) (*rawConn, error) {
	t.Helper()
	cfg := &tls.Config{
		RootCAs:    roots,
		ServerName: ep.host,
		MinVersion: tls.VersionTLS12,
	}
	if cert != nil {
		c := *cert
		// Present the chain even if the server's acceptable-CA list does not
		// name our issuer: the real service decides at the MQTT level.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	d := &net.Dialer{Timeout: ioWait}
	tc, err := tls.DialWithDialer(d, "tcp", ep.addr, cfg)
	if err != nil {
		return nil, err
	}
	rc := &rawConn{t: t, conn: tc, tls: tc}
	t.Cleanup(func() { tc.Close() })
	return rc, nil
}

// connect sends CONNECT and returns the CONNACK return code, or the error
// that ended the connection before a CONNACK arrived.
func (c *rawConn) connect(clientID, username string, clean bool) (byte, error) {
	p := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	p.ProtocolName = "MQTT"
	p.ProtocolVersion = 4
	p.ClientIdentifier = clientID
	p.CleanSession = clean
	p.Keepalive = 240
	if username != "" {
		p.UsernameFlag = true
		p.Username = username
	}
	if err := c.write(p); err != nil {
		return 0, err
	}
	pk, err := c.read()
	if err != nil {
		return 0, err
	}
	ack, ok := pk.(*packets.ConnackPacket)
	if !ok {
		return 0, fmt.Errorf("expected CONNACK, got %s", pk)
	}
	return ack.ReturnCode, nil
}

// mustConnect fails the test unless CONNACK is 0.
func (c *rawConn) mustConnect(clientID, username string) {
	c.t.Helper()
	rc, err := c.connect(clientID, username, true)
	if err != nil {
		c.t.Fatalf("CONNECT %q/%q: %v", clientID, username, err)
	}
	if rc != 0 {
		c.t.Fatalf("CONNECT %q/%q: CONNACK %d, want 0", clientID, username, rc)
	}
}

// subscribe sends SUBSCRIBE for one filter and returns the SUBACK code.
func (c *rawConn) subscribe(filter string, qos byte) (byte, error) {
	p := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	p.MessageID = c.nextID()
	p.Topics = []string{filter}
	p.Qoss = []byte{qos}
	if err := c.write(p); err != nil {
		return 0, err
	}
	for {
		pk, err := c.read()
		if err != nil {
			return 0, err
		}
		if sa, ok := pk.(*packets.SubackPacket); ok {
			if sa.MessageID != p.MessageID || len(sa.ReturnCodes) != 1 {
				return 0, fmt.Errorf("SUBACK mismatch: %s", sa)
			}
			return sa.ReturnCodes[0], nil
		}
		if err := c.keep(pk); err != nil {
			return 0, err
		}
	}
}

// keep acks and queues a PUBLISH that arrived while waiting for something else.
func (c *rawConn) keep(pk packets.ControlPacket) error {
	p, ok := pk.(*packets.PublishPacket)
	if !ok {
		return nil
	}
	c.pending = append(c.pending, p)
	return c.ack(p)
}

func (c *rawConn) ack(p *packets.PublishPacket) error {
	if p.Qos != 1 {
		return nil
	}
	a := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
	a.MessageID = p.MessageID
	return c.write(a)
}

func (c *rawConn) mustSubscribe(filter string) {
	c.t.Helper()
	code, err := c.subscribe(filter, 1)
	if err != nil || code > 1 {
		c.t.Fatalf("SUBSCRIBE %s: code %d, err %v", filter, code, err)
	}
}

// publish sends one PUBLISH. With QoS 1 it does not wait for the PUBACK;
// use expectPuback or the next read.
func (c *rawConn) publish(topic string, qos byte, retain bool, payload []byte) (uint16, error) {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName = topic
	p.Qos = qos
	p.Retain = retain
	p.Payload = payload
	if qos > 0 {
		p.MessageID = c.nextID()
	}
	return p.MessageID, c.write(p)
}

// nextPublish returns the next PUBLISH (queued or read), acking QoS 1 ones.
func (c *rawConn) nextPublish() (*packets.PublishPacket, error) {
	if len(c.pending) > 0 {
		p := c.pending[0]
		c.pending = c.pending[1:]
		return p, nil
	}
	for {
		pk, err := c.read()
		if err != nil {
			return nil, err
		}
		if p, ok := pk.(*packets.PublishPacket); ok {
			return p, c.ack(p)
		}
	}
}

// expectPuback reads until the PUBACK for id arrives.
func (c *rawConn) expectPuback(id uint16) error {
	for {
		pk, err := c.read()
		if err != nil {
			return err
		}
		if a, ok := pk.(*packets.PubackPacket); ok && a.MessageID == id {
			return nil
		}
		if err := c.keep(pk); err != nil {
			return err
		}
	}
}

// expectClosed reads until the server closes the connection. Any packet that
// arrives first is returned in the error so the test can say what came instead.
func (c *rawConn) expectClosed() error {
	var seen []string
	for {
		pk, err := c.read()
		if err != nil {
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("connection not closed: %v (after %v)", err, seen)
		}
		seen = append(seen, summary(pk))
		if len(seen) > 20 {
			return fmt.Errorf("connection stays open; received %v", seen)
		}
	}
}

// isClosed says whether err is the peer closing the connection (FIN, RST or
// a TLS close_notify), as opposed to our own read deadline.
func isClosed(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}

func summary(pk packets.ControlPacket) string {
	if p, ok := pk.(*packets.PublishPacket); ok {
		return fmt.Sprintf("PUBLISH %s %q", p.TopicName, trunc(string(p.Payload), 200))
	}
	return strings.SplitN(pk.String(), "\n", 2)[0]
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func (c *rawConn) nextID() uint16 {
	c.mid++
	if c.mid == 0 {
		c.mid = 1
	}
	return c.mid
}

func (c *rawConn) write(p packets.ControlPacket) error {
	c.conn.SetWriteDeadline(time.Now().Add(ioWait))
	return p.Write(c.conn)
}

func (c *rawConn) read() (packets.ControlPacket, error) {
	c.conn.SetReadDeadline(time.Now().Add(ioWait))
	return packets.ReadPacket(c.conn)
}

func (c *rawConn) close() { c.conn.Close() }
