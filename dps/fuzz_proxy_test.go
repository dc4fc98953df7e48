package dps

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// scriptedConn is a proxy connection that answers with a fixed byte
// stream and swallows what is written.
type scriptedConn struct {
	r       *bytes.Reader
	written bytes.Buffer
}

func (c *scriptedConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptedConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptedConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }

// tunnelThrough runs connectTunnel against a proxy that answers stream
// and returns what the tunnel then delivers.
func tunnelThrough(t *testing.T, stream []byte) ([]byte, error) {
	t.Helper()
	pu, _ := url.Parse("http://user:pw@proxy.example:3128")
	conn, err := connectTunnel(context.Background(), &scriptedConn{r: bytes.NewReader(stream)}, pu, "proxy.example:3128", "hub.example:8883")
	if err != nil {
		return nil, err
	}
	got, rerr := io.ReadAll(conn)
	if rerr != nil {
		t.Fatalf("reading the tunnel: %v", rerr)
	}
	return got, nil
}

// TestProxyTunnelKeepsBytesAfterResponse: the bytes after a 200 answer to
// CONNECT belong to the tunnel (RFC 9110 9.3.6: a client ignores
// Content-Length and Transfer-Encoding on a 2xx CONNECT response). Before,
// a proxy that sent Content-Length: N had the first N tunnel bytes (the
// server's TLS hello) swallowed, and "chunked" ate the tunnel.
func TestProxyTunnelKeepsBytesAfterResponse(t *testing.T) {
	t.Parallel()
	tunnel := "\x16\x03\x03 server hello and the rest"
	for _, hdr := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\n",
		"HTTP/1.0 200 OK\r\nProxy-Agent: squid\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
	} {
		got, err := tunnelThrough(t, []byte(hdr+tunnel))
		if err != nil || string(got) != tunnel {
			t.Errorf("%q: tunnel delivered %q (%v), want %q", hdr, got, err, tunnel)
		}
	}
}

// TestProxyResponseHeaderBounded: a proxy that never ends its header
// gets an error once it passes 64 KiB, not unbounded memory.
func TestProxyResponseHeaderBounded(t *testing.T) {
	t.Parallel()
	stream := []byte("HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 100))
	_, err := tunnelThrough(t, stream)
	var pe *ProxyError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "64 KiB") {
		t.Fatalf("endless header: %v, want a ProxyError naming the 64 KiB limit", err)
	}
}

// FuzzProxyConnectResponse feeds arbitrary proxy answers to the CONNECT
// client: no panic, every failure is a *ProxyError, and on success the
// tunnel delivers exactly the bytes that followed the response header,
// never invented or lost ones.
func FuzzProxyConnectResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\nTLS",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 502 Bad Gateway\r\n\r\n",
		"HTTP/1.1 200\n\nx",
		"HTTP/1.1 200 OK\r\nX: y",
		"SSH-2.0-OpenSSH\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		got, err := tunnelThrough(t, stream)
		if err != nil {
			var pe *ProxyError
			if !errors.As(err, &pe) || err.Error() == "" {
				t.Fatalf("error %T %v is not a *ProxyError", err, err)
			}
			return
		}
		if !bytes.HasSuffix(stream, got) {
			t.Fatalf("tunnel delivered %q, not the end of %q", got, stream)
		}
		head := stream[:len(stream)-len(got)]
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("tunnel starts before the end of the header: header %q, tunnel %q", head, got)
		}
	})
}
