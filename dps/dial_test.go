package dps

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// tlsServer is a loopback TLS server that completes handshakes and
// then holds the connection until the client reads (so a TLS 1.3 client
// certificate refusal reaches the client).
func tlsServer(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool, maxVersion uint16) string {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: maxVersion}
	if clientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = clientCAs
	}
	return serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, cfg)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		tc.Write([]byte("x"))
		io.Copy(io.Discard, tc)
	})
}

// serveLoopback listens on 127.0.0.1 and runs serve for each connection in
// its own goroutine; cleanup closes the listener and waits for them all.
// It returns the address.
func serveLoopback(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	}()
	return ln.Addr().String()
}

func TestDialTLSClassification(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "Test Server Root")
	other := newTestCA(t, "Intercepting Proxy CA")
	devCA := newTestCA(t, "Device CA")
	cred := devCA.credential(t, "dev-1")
	host := "dps.example.test"
	addr := tlsServer(t, ca.serverCert(t, host), nil, 0)
	ctx := context.Background()

	nw := func(bundle *testCA, now func() time.Time) *Network {
		return &Network{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{bundle.cert}, Now: now}
	}
	// Success.
	c, err := nw(ca, nil).dial(ctx, host+":8883", &cred)
	if err != nil {
		t.Fatalf("good dial: %v", err)
	}
	cs := c.(*tls.Conn).ConnectionState()
	if cs.ServerName != host || cs.Version < tls.VersionTLS12 {
		t.Errorf("SNI %q version %x", cs.ServerName, cs.Version)
	}
	c.Close()

	check := func(name string, n *Network, endpoint string, kind TLSErrorKind, retry bool) *TLSError {
		t.Helper()
		_, err := n.dial(ctx, endpoint, &cred)
		var te *TLSError
		if !errors.As(err, &te) || te.Kind != kind {
			t.Fatalf("%s: got %v, want TLS %v", name, err, kind)
		}
		if !errors.Is(err, ErrTLS) || Retryable(err) != retry {
			t.Errorf("%s: Is(ErrTLS)=%v Retryable=%v", name, errors.Is(err, ErrTLS), Retryable(err))
		}
		return te
	}
	te := check("wrong bundle", nw(other, nil), host+":8883", TLSUnknownAuthority, false)
	if !te.Interception || !strings.Contains(te.Error(), "interception") || !strings.Contains(te.Issuer, "Test Server Root") {
		t.Errorf("interception not reported: %v", te)
	}
	check("expired", nw(ca, func() time.Time { return time.Now().Add(48 * time.Hour) }), host+":8883", TLSExpired, true)
	te = check("not yet valid", nw(ca, func() time.Time { return time.Unix(0, 0) }), host+":8883", TLSNotYetValid, true)
	if !strings.Contains(te.Error(), "clock") {
		t.Errorf("no clock hint: %v", te)
	}
	wrong := &Network{Resolve: map[string]string{"wrong.example.test": addr}, TrustBundle: []*x509.Certificate{ca.cert}}
	check("hostname", wrong, "wrong.example.test:8883", TLSHostname, false)
}

func TestDialClientCertRejected(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "Root")
	trusted := newTestCA(t, "Enrolled CA")
	stranger := newTestCA(t, "Unknown Device CA")
	cred := stranger.credential(t, "dev-2")
	pool := x509.NewCertPool()
	pool.AddCert(trusted.cert)
	host := "hub.example.test"
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		addr := tlsServer(t, ca.serverCert(t, host), pool, v)
		n := &Network{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{ca.cert}}
		c, err := n.dial(context.Background(), host, &cred)
		if err == nil {
			// TLS 1.3: the refusal arrives with the first read.
			_, err = c.Read(make([]byte, 1))
			c.Close()
			err = classifyConnErr(host, "connect", err)
		}
		var te *TLSError
		if !errors.As(err, &te) || te.Kind != TLSClientCertRejected || !errors.Is(err, ErrNotAuthorized) || Retryable(err) {
			t.Errorf("TLS %x: got %v, want client certificate rejected", v, err)
		}
	}
}

func TestDialNetworkErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cred := newTestCA(t, "x").credential(t, "d")
	// TCP: a port with nothing listening.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	n := &Network{Resolve: map[string]string{"h.example.test": dead}}
	_, err := n.dial(ctx, "h.example.test", &cred)
	var tcp *TCPError
	if !errors.As(err, &tcp) || !errors.Is(err, ErrTCP) || !Retryable(err) {
		t.Errorf("tcp: %v", err)
	}
	// DNS: classified from the dialer's *net.DNSError.
	n = &Network{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "nx.example.test", IsNotFound: true}}
	}}
	_, err = n.dial(ctx, "nx.example.test", &cred)
	var dns *DNSError
	if !errors.As(err, &dns) || dns.Host != "nx.example.test" || !errors.Is(err, ErrDNS) || !Retryable(err) {
		t.Errorf("dns: %v", err)
	}
	// Endpoint with no port uses 8883, or 443 for WebSockets.
	var got []string
	n = &Network{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		got = append(got, addr)
		return nil, errors.New("no")
	}}
	n.dial(ctx, "a.example.test", &cred)
	n.WebSocket = true
	n.dial(ctx, "a.example.test", &cred)
	n.Resolve = map[string]string{"a.example.test": "127.0.0.9"}
	n.dial(ctx, "a.example.test:1234", &cred)
	if strings.Join(got, " ") != "a.example.test:8883 a.example.test:443 127.0.0.9:1234" {
		t.Errorf("dialled %v", got)
	}
}

// connectProxy is a tiny HTTP CONNECT proxy with its own name table (a
// real proxy resolves names itself). It records the targets asked for.
type connectProxy struct {
	addr    string
	resolve map[string]string
	user    string // "user:pass" to require, "" for none
	mu      sync.Mutex
	targets []string
}

func startProxy(t *testing.T, resolve map[string]string, user string) *connectProxy {
	t.Helper()
	p := &connectProxy{resolve: resolve, user: user}
	p.addr = serveLoopback(t, p.serve)
	return p
}

func (p *connectProxy) Targets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, req.Host)
	p.mu.Unlock()
	if p.user != "" {
		if u, pw, ok := parseBasic(req.Header.Get("Proxy-Authorization")); !ok || u+":"+pw != p.user {
			io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
			return
		}
	}
	host, port, _ := net.SplitHostPort(req.Host)
	dst := req.Host
	if a, ok := p.resolve[host]; ok {
		dst = withPort(a, port)
	}
	up, err := net.Dial("tcp", dst)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	<-done
}

func parseBasic(h string) (string, string, bool) {
	r := &http.Request{Header: http.Header{"Authorization": {h}}}
	return r.BasicAuth()
}

func TestDialProxy(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "Root")
	devCA := newTestCA(t, "Device CA")
	pool := x509.NewCertPool()
	pool.AddCert(devCA.cert)
	host := "dps.example.test"
	addr := tlsServer(t, ca.serverCert(t, host), pool, 0)
	p := startProxy(t, map[string]string{host: addr}, "u:p w")
	cred := devCA.credential(t, "dev-3")

	n := &Network{Proxy: "http://u:p%20w@" + p.addr, TrustBundle: []*x509.Certificate{ca.cert}}
	c, err := n.dial(context.Background(), host, &cred)
	if err != nil {
		t.Fatalf("through proxy: %v", err)
	}
	// The server required our client certificate, so the handshake
	// through the tunnel proves it travelled end to end.
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read through tunnel: %v", err)
	}
	c.Close()
	if got := p.Targets(); len(got) != 1 || got[0] != host+":8883" {
		t.Errorf("proxy saw CONNECT %v", got)
	}

	n.Proxy = "http://" + p.addr // no credentials
	_, err = n.dial(context.Background(), host, &cred)
	var pe *ProxyError
	if !errors.As(err, &pe) || pe.StatusCode != 407 || Retryable(err) || !errors.Is(err, ErrProxy) {
		t.Errorf("407: %v", err)
	}
	n.Proxy = "http://127.0.0.1:1"
	_, err = n.dial(context.Background(), host, &cred)
	if !errors.As(err, &pe) || pe.StatusCode != 0 || !Retryable(err) || !errors.Is(err, ErrTCP) {
		t.Errorf("proxy down: %v", err)
	}
}

func TestCredential(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "CA")
	good := ca.credential(t, "dev-4")
	if _, err := checkCertificate(&good); err != nil {
		t.Fatal(err)
	}
	other := ca.credential(t, "dev-5")
	bad := tlsCert(other.PrivateKey.(crypto.Signer), good.Leaf)
	if _, err := checkCertificate(&bad); err == nil || !errors.Is(err, ErrConfig) {
		t.Errorf("mismatched key accepted: %v", err)
	}
	signer := good.PrivateKey.(crypto.Signer)
	withCA := tls.Certificate{PrivateKey: signer, Certificate: [][]byte{good.Leaf.Raw, ca.cert.Raw}}
	if leaf, err := checkCertificate(&withCA); err != nil || leaf.Subject.CommonName != "dev-4" {
		t.Errorf("chain with its CA: %v", err)
	}
	broken := tls.Certificate{PrivateKey: signer, Certificate: [][]byte{good.Leaf.Raw, newTestCA(t, "x").cert.Raw}}
	if _, err := checkCertificate(&broken); err == nil {
		t.Error("broken chain accepted")
	}
	garbage := tls.Certificate{PrivateKey: signer, Certificate: [][]byte{[]byte("nope")}}
	if _, err := checkCertificate(&garbage); err == nil {
		t.Error("unparsable chain accepted")
	}
}

func TestAzureRoots(t *testing.T) {
	t.Parallel()
	roots := AzureRoots()
	want := map[string]bool{"DigiCert Global Root G2": false, "DigiCert Global Root G3": false,
		"Microsoft RSA Root Certificate Authority 2017": false, "Microsoft ECC Root Certificate Authority 2017": false}
	for _, r := range roots {
		want[r.Subject.CommonName] = true
	}
	for k, ok := range want {
		if !ok || len(roots) != 4 {
			t.Errorf("embedded roots lack %q (have %d)", k, len(roots))
		}
	}
	if _, err := ParseTrustBundle([]byte("not pem")); err == nil {
		t.Error("garbage bundle accepted")
	}
}
