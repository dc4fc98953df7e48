package dps

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

//go:embed azure-roots.pem
var azureRootsPEM []byte

// AzureRootsPEM returns the embedded default trust bundle: DigiCert
// Global Root G2 and Microsoft RSA Root Certificate Authority 2017 (what
// DPS and IoT Hub chain to today), plus DigiCert Global Root G3 and
// Microsoft ECC Root Certificate Authority 2017 (ECC hubs), as shipped by
// Debian's ca-certificates.
func AzureRootsPEM() []byte { return append([]byte(nil), azureRootsPEM...) }

// AzureRoots parses AzureRootsPEM.
func AzureRoots() []*x509.Certificate {
	certs, err := ParseTrustBundle(azureRootsPEM)
	if err != nil {
		panic("dps: embedded azure-roots.pem: " + err.Error()) // caught by TestAzureRoots
	}
	return certs
}

// ParseTrustBundle parses a PEM bundle of CA certificates. It fails on
// an empty bundle or a block that is not a certificate, so a truncated
// file is noticed instead of silently trusting less.
func ParseTrustBundle(pemData []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := pemData
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("trust bundle: unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("trust bundle: certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("trust bundle: no PEM certificates found")
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("trust bundle: %d bytes of trailing non-PEM data", len(rest))
	}
	return certs, nil
}

// checkCertificate checks the client certificate a Config or HubConfig
// carries (the device's key and chain; dps imports nothing of the
// caller's, so it takes the standard library's pair): the key is a
// crypto.Signer (a TPM key is fine; Sign may take hundreds of
// milliseconds), the chain is leaf first with every intermediate up to
// but not including the CA the service knows, the leaf certifies the
// key and each certificate is signed by the next. It returns the leaf.
func checkCertificate(tc *tls.Certificate) (*x509.Certificate, error) {
	signer, ok := tc.PrivateKey.(crypto.Signer)
	if !ok || signer == nil {
		return nil, &ConfigError{Field: "credential", Err: errors.New("no signer")}
	}
	if len(tc.Certificate) == 0 {
		return nil, &ConfigError{Field: "credential", Err: errors.New("no certificate chain")}
	}
	chain := make([]*x509.Certificate, len(tc.Certificate))
	for i, der := range tc.Certificate {
		if i == 0 && tc.Leaf != nil && bytes.Equal(tc.Leaf.Raw, der) {
			chain[0] = tc.Leaf
			continue
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, &ConfigError{Field: "credential chain", Err: fmt.Errorf("certificate %d: %w", i, err)}
		}
		chain[i] = cert
	}
	type eq interface{ Equal(crypto.PublicKey) bool }
	pub, ok := signer.Public().(eq)
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, &ConfigError{Field: "credential", Err: errors.New("the leaf certificate's public key does not match the signer")}
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, &ConfigError{Field: "credential chain", Err: fmt.Errorf("certificate %d is not signed by certificate %d: %w", i, i+1, err)}
		}
	}
	return chain[0], nil
}

// Network says how to reach the service. The zero value dials directly
// and trusts the embedded Azure roots.
type Network struct {
	// Resolve overrides name resolution: "host" or "host:port" ->
	// "ip:port" (or "ip", keeping the port). TLS still uses the real
	// host for SNI and verification. Used with the simulator.
	Resolve map[string]string
	// DialContext replaces the TCP dialer (after Resolve).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Proxy is an HTTP CONNECT proxy URL, "http://[user:pass@]host:port".
	// TLS, with the client certificate, runs end to end inside the
	// tunnel.
	Proxy string
	// WebSocket selects MQTT over WebSockets (wss, path
	// /$iothub/websocket, subprotocol mqtt); the default port becomes 443.
	WebSocket bool
	// TrustBundle is the set of roots the server must chain to. Nil
	// means AzureRoots().
	TrustBundle []*x509.Certificate
	// Now is the time used to verify the server certificate. Nil means
	// time.Now.
	Now func() time.Time
	// HandshakeTimeout bounds TCP connect + proxy + TLS + WebSocket.
	// Default 30 s (a TPM signature alone can take 600 ms).
	HandshakeTimeout time.Duration
}

const (
	defaultMQTTPort = "8883"
	defaultWSPort   = "443"
	wsPath          = "/$iothub/websocket"
)

// splitEndpoint returns host and port, defaulting the port.
func (n *Network) splitEndpoint(endpoint string) (string, string, error) {
	if endpoint == "" {
		return "", "", &ConfigError{Field: "endpoint", Err: errors.New("empty")}
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		// No port given.
		host, port = endpoint, defaultMQTTPort
		if n.WebSocket {
			port = defaultWSPort
		}
		if strings.ContainsAny(host, "/ ") {
			return "", "", &ConfigError{Field: "endpoint", Err: fmt.Errorf("%q is not host[:port]", endpoint)}
		}
	}
	if host == "" {
		return "", "", &ConfigError{Field: "endpoint", Err: fmt.Errorf("%q has no host", endpoint)}
	}
	return host, port, nil
}

func (n *Network) resolve(host, port string) string {
	if a, ok := n.Resolve[net.JoinHostPort(host, port)]; ok {
		return withPort(a, port)
	}
	if a, ok := n.Resolve[host]; ok {
		return withPort(a, port)
	}
	return net.JoinHostPort(host, port)
}

func withPort(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), port)
}

func (n *Network) bundle() []*x509.Certificate {
	if n.TrustBundle != nil {
		return n.TrustBundle
	}
	return defaultRoots()
}

var defaultRoots = sync.OnceValue(AzureRoots)

// defaultPool is the pool for a nil TrustBundle, built once rather than
// on every dial (a CertPool is only read during verification).
var defaultPool = sync.OnceValue(func() *x509.CertPool { return certPool(defaultRoots()) })

func certPool(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

func (n *Network) rootPool() *x509.CertPool {
	if n.TrustBundle != nil {
		return certPool(n.TrustBundle)
	}
	return defaultPool()
}

func (n *Network) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// tlsConfig is the client TLS configuration: TLS 1.2 minimum (1.3
// allowed), SNI = host, server verified against the bundle, and our
// chain always offered.
func (n *Network) tlsConfig(host string, cred *tls.Certificate) *tls.Config {
	cfg := &tls.Config{
		ServerName: host,
		RootCAs:    n.rootPool(),
		MinVersion: tls.VersionTLS12,
		Time:       n.Now,
	}
	if cred != nil {
		tc := cred
		// GetClientCertificate rather than Certificates: Go sends no
		// certificate when the server's acceptable-CA list does not name
		// our issuer, and the service may not list it.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc, nil }
	}
	return cfg
}

// dial opens TCP (directly or through the proxy), runs TLS and, if
// configured, the WebSocket upgrade. Every failure is a typed error.
func (n *Network) dial(ctx context.Context, endpoint string, cred *tls.Certificate) (net.Conn, error) {
	return n.dialWith(ctx, endpoint, cred, nil)
}

// dialWith is dial; serverVerified, if set, is called once the server's
// certificate has been verified, before the handshake completes.
func (n *Network) dialWith(ctx context.Context, endpoint string, cred *tls.Certificate, serverVerified func()) (net.Conn, error) {
	host, port, err := n.splitEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	timeout := n.HandshakeTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	target := net.JoinHostPort(host, port)
	var raw net.Conn
	if n.Proxy != "" {
		raw, err = n.dialProxy(ctx, target)
	} else {
		raw, err = n.dialTCP(ctx, host, n.resolve(host, port))
	}
	if err != nil {
		return nil, stepTimeout(ctx, "connect "+target, err)
	}
	cfg := n.tlsConfig(host, cred)
	if serverVerified != nil {
		// Called after Go's own verification succeeded.
		cfg.VerifyConnection = func(tls.ConnectionState) error { serverVerified(); return nil }
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, stepTimeout(ctx, "tls "+target, classifyTLS(host, err, n.bundle(), n.now()))
	}
	if !n.WebSocket {
		return tc, nil
	}
	ws, err := dialWebSocket(ctx, host, port, tc, timeout)
	if err != nil {
		tc.Close()
		return nil, stepTimeout(ctx, "websocket "+target, err)
	}
	return ws, nil
}

// stepTimeout turns a failure caused by the step deadline into a
// TimeoutError that keeps the cause.
func stepTimeout(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ErrTimeout) {
		return &TimeoutError{Op: op, Last: err, Err: ctx.Err()}
	}
	return err
}

func (n *Network) dialTCP(ctx context.Context, host, addr string) (net.Conn, error) {
	dial := n.DialContext
	if dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return nil, &DNSError{Host: dnsErr.Name, Err: err}
		}
		return nil, &TCPError{Addr: addr, Err: err}
	}
	return c, nil
}

// dialProxy opens an HTTP CONNECT tunnel to target. The proxy only sees
// the host name; TLS runs inside the tunnel so the client certificate
// reaches the service untouched (docs/field-problems.md, row 8).
func (n *Network) dialProxy(ctx context.Context, target string) (net.Conn, error) {
	raw := n.Proxy
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	pu, err := url.Parse(raw)
	if err != nil || pu.Host == "" || pu.Scheme != "http" {
		return nil, &ConfigError{Field: "proxy", Err: fmt.Errorf("%q is not http://host:port", redactURL(n.Proxy))}
	}
	phost, pport, err := net.SplitHostPort(pu.Host)
	if err != nil {
		phost, pport = pu.Host, "8080"
	}
	paddr := n.resolve(phost, pport)
	conn, err := n.dialTCP(ctx, phost, paddr)
	if err != nil {
		return nil, &ProxyError{Proxy: paddr, Target: target, Err: err}
	}
	return connectTunnel(ctx, conn, pu, paddr, target)
}

// connectTunnel sends CONNECT target over conn and reads the answer.
func connectTunnel(ctx context.Context, raw net.Conn, pu *url.URL, paddr, target string) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: target},
		Host:   target,
		Header: http.Header{},
	}
	if pu.User != nil {
		pw, _ := pu.User.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(pu.User.Username()+":"+pw)))
	}
	if err := req.Write(raw); err != nil {
		raw.Close()
		return nil, &ProxyError{Proxy: paddr, Target: target, Err: err}
	}
	// The header is bounded; what follows a 200 belongs to the tunnel.
	lim := &headerLimitReader{r: raw, left: proxyHeaderLimit}
	br := bufio.NewReader(lim)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		raw.Close()
		if errors.Is(err, errProxyHeaderTooLong) {
			err = fmt.Errorf("CONNECT response header over %d KiB", proxyHeaderLimit>>10)
		}
		return nil, &ProxyError{Proxy: paddr, Target: target, Err: fmt.Errorf("reading CONNECT response: %w", err)}
	}
	lim.off()
	// resp.Body is never read or closed: a client ignores Content-Length
	// and Transfer-Encoding on a 2xx answer to CONNECT (RFC 9110, 9.3.6),
	// and reading a "body" would eat the server's first tunnel bytes.
	if resp.StatusCode != http.StatusOK {
		raw.Close()
		return nil, &ProxyError{Proxy: paddr, Target: target, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	raw.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		// Bytes after the response belong to the tunnel.
		return &bufferedConn{Conn: raw, r: br}, nil
	}
	return raw, nil
}

// proxyHeaderLimit bounds a proxy's answer to CONNECT.
const proxyHeaderLimit = 64 << 10

var errProxyHeaderTooLong = errors.New("proxy response header too long")

// headerLimitReader lets at most left bytes through until off is called.
type headerLimitReader struct {
	r         io.Reader
	left      int
	unlimited bool
}

func (l *headerLimitReader) Read(p []byte) (int, error) {
	if l.unlimited {
		return l.r.Read(p)
	}
	if l.left <= 0 {
		return 0, errProxyHeaderTooLong
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

func (l *headerLimitReader) off() { l.unlimited = true }

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// classifyTLS maps a handshake error to a TLSError kind.
func classifyTLS(host string, err error, bundle []*x509.Certificate, now time.Time) error {
	e := &TLSError{Kind: TLSHandshake, Host: host, Err: err}
	var cve *tls.CertificateVerificationError
	var certs []*x509.Certificate
	if errors.As(err, &cve) {
		certs = cve.UnverifiedCertificates
	}
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	var cie x509.CertificateInvalidError
	switch {
	case errors.As(err, &uae):
		e.Kind = TLSUnknownAuthority
		if len(certs) > 0 {
			top := certs[len(certs)-1]
			e.Issuer = top.Issuer.String()
			e.Interception = certs[0].VerifyHostname(host) == nil && !inBundle(top, bundle)
		}
	case errors.As(err, &he):
		e.Kind = TLSHostname
	case errors.As(err, &cie) && cie.Reason == x509.Expired:
		e.Kind = TLSExpired
		for _, c := range certs {
			if now.Before(c.NotBefore) {
				e.Kind = TLSNotYetValid
			}
		}
		if cie.Cert != nil && now.Before(cie.Cert.NotBefore) {
			e.Kind = TLSNotYetValid
		}
	default:
		if alert := remoteAlert(err); alert != "" && clientCertAlert(alert) {
			e.Kind = TLSClientCertRejected
		}
	}
	return e
}

// inBundle reports whether c's issuer is one of the bundle's subjects.
func inBundle(c *x509.Certificate, bundle []*x509.Certificate) bool {
	for _, b := range bundle {
		if string(b.RawSubject) == string(c.RawIssuer) {
			return true
		}
	}
	return false
}

// remoteAlert returns the text of a TLS alert the peer sent ("tls: bad
// certificate"), or "". crypto/tls reports received alerts as a
// net.OpError with Op "remote error" around an unexported type.
func remoteAlert(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil {
		return oe.Err.Error()
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return ae.Error()
	}
	return ""
}

func clientCertAlert(text string) bool {
	for _, s := range []string{"bad certificate", "unsupported certificate", "revoked certificate",
		"expired certificate", "unknown certificate", "unknown certificate authority", "access denied", "certificate required"} {
		if text == "tls: "+s {
			return true
		}
	}
	return false
}

// classifyConnErr maps an error seen after the TLS handshake (while
// exchanging MQTT packets) to a typed error: a client-certificate alert
// (TLS 1.3 sends it after the client's handshake finished), or the
// server closing on us.
func classifyConnErr(host, phase string, err error) error {
	var typed interface{ Retryable() bool }
	if errors.As(err, &typed) {
		return err
	}
	if alert := remoteAlert(err); alert != "" {
		kind := TLSHandshake
		if clientCertAlert(alert) {
			kind = TLSClientCertRejected
		}
		return &TLSError{Kind: kind, Host: host, Err: err}
	}
	// EOF, reset, a WebSocket close frame: the server hung up.
	return &ClosedError{Host: host, Phase: phase, Err: err}
}

// dialWebSocket upgrades an established TLS connection to a WebSocket
// carrying MQTT.
func dialWebSocket(ctx context.Context, host, port string, tc *tls.Conn, timeout time.Duration) (net.Conn, error) {
	hostport := host
	if port != defaultWSPort {
		hostport = net.JoinHostPort(host, port)
	}
	u := "wss://" + hostport + wsPath
	used := false
	d := &websocket.Dialer{
		NetDialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, errors.New("websocket dialer asked for a second connection")
			}
			used = true
			return tc, nil
		},
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: timeout,
		Proxy:            nil, // the proxy, if any, is already in the path
	}
	ws, resp, err := d.DialContext(ctx, u, nil)
	if err != nil {
		we := &WebSocketError{URL: u, Err: err}
		if resp != nil {
			we.StatusCode = resp.StatusCode
		}
		return nil, we
	}
	if p := ws.Subprotocol(); p != "" && p != "mqtt" {
		ws.Close()
		return nil, &WebSocketError{URL: u, Err: fmt.Errorf("server chose subprotocol %q, want mqtt", p)}
	}
	return &wsConn{Conn: ws}, nil
}

// wsConn adapts a WebSocket to net.Conn: MQTT bytes travel in binary
// messages; reads continue across message boundaries.
type wsConn struct {
	*websocket.Conn
	rmu sync.Mutex
	r   io.Reader
	wmu sync.Mutex
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, &ProtocolError{What: "websocket message type", Raw: fmt.Sprint(typ), Err: errors.New("MQTT needs binary messages")}
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

var _ net.Conn = (*wsConn)(nil)

// redactURL masks the password in a proxy setting ("user:xxxxx@host"):
// errors reach logs and terminals.
func redactURL(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s
	}
	start := strings.Index(s, "://")
	if start < 0 || start > at {
		start = 0
	} else {
		start += 3
	}
	user, _, hasPass := strings.Cut(s[start:at], ":")
	if !hasPass {
		return s
	}
	return s[:start] + user + ":xxxxx" + s[at:]
}
