package simulator

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// chanListener hands out the connections pushed into it.
type chanListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// wsFrame is one client frame: masked, as RFC 6455 requires of clients.
func wsFrame(fin bool, op byte, payload []byte) []byte {
	var b bytes.Buffer
	first := op
	if fin {
		first |= 0x80
	}
	b.WriteByte(first)
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(0x80 | byte(n))
	case n < 1<<16:
		b.WriteByte(0x80 | 126)
		binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(0x80 | 127)
		binary.Write(&b, binary.BigEndian, uint64(n))
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	b.Write(key[:])
	for i, c := range payload {
		b.WriteByte(c ^ key[i%4])
	}
	return b.Bytes()
}

// binaryPayloads is the concatenated payload of the binary messages in a
// client frame stream, read leniently (any frame that parses counts): the
// most an MQTT reader may be handed.
func binaryPayloads(stream []byte) []byte {
	var out []byte
	inBinary := false
	for len(stream) >= 2 {
		op := stream[0] & 0x0f
		masked := stream[1]&0x80 != 0
		n := uint64(stream[1] & 0x7f)
		stream = stream[2:]
		switch n {
		case 126:
			if len(stream) < 2 {
				return out
			}
			n, stream = uint64(binary.BigEndian.Uint16(stream)), stream[2:]
		case 127:
			if len(stream) < 8 {
				return out
			}
			n, stream = binary.BigEndian.Uint64(stream), stream[8:]
		}
		var key []byte
		if masked {
			if len(stream) < 4 {
				return out
			}
			key, stream = stream[:4], stream[4:]
		}
		if n > uint64(len(stream)) {
			n = uint64(len(stream)) // a cut frame: its start may be read
		}
		p := append([]byte(nil), stream[:n]...)
		stream = stream[n:]
		for i := range p {
			if key != nil {
				p[i] ^= key[i%4]
			}
		}
		switch op {
		case 0x2:
			inBinary = true
			out = append(out, p...)
		case 0x1:
			inBinary = false
		case 0x0:
			if inBinary {
				out = append(out, p...)
			}
		}
	}
	return out
}

// FuzzWebSocketFrames sends an upgrade and then arbitrary frames to the
// MQTT-over-WebSocket listener: no panic or hang, and the MQTT side is
// handed only bytes that binary messages carried, in order.
func FuzzWebSocketFrames(f *testing.F) {
	ln := &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
	l := newWSListener("fuzz", ln, nil)
	got := make(chan []byte, 1)
	l.estab = func(_ string, c net.Conn) error {
		b, _ := io.ReadAll(io.LimitReader(c, 1<<20))
		got <- b
		return nil
	}
	go l.srv.Serve(ln)
	f.Cleanup(func() { l.srv.Close() })

	connect := []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0}
	f.Add(wsFrame(true, 2, connect))
	f.Add(append(wsFrame(false, 2, connect[:5]), wsFrame(true, 0, connect[5:])...))
	f.Add(append(append(wsFrame(false, 2, connect[:3]), wsFrame(true, 9, []byte("ping"))...), wsFrame(true, 0, connect[3:])...))
	f.Add(append(wsFrame(true, 2, bytes.Repeat([]byte{0x30}, 300)), wsFrame(true, 8, []byte{3, 232})...))
	f.Add(wsFrame(true, 2, bytes.Repeat([]byte{1}, 70000)))
	f.Add(wsFrame(true, 1, []byte("text is not MQTT")))
	f.Add([]byte{0x82, 0x05, 'h', 'e', 'l', 'l', 'o'}) // unmasked: refused
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4})
	f.Add([]byte{0xf2, 0x80, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, frames []byte) {
		client, server := net.Pipe()
		defer client.Close()
		ln.conns <- server
		req, _ := http.NewRequest("GET", "https://hub.example"+WebSocketPath, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		req.Header.Set("Sec-WebSocket-Protocol", "mqtt")
		go req.Write(client)
		br := bufio.NewReader(client)
		resp, err := http.ReadResponse(br, req)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		// The server may answer frames (pongs, close): read and drop
		// them, or its writes would block the pipe.
		go io.Copy(io.Discard, br)
		go func() {
			client.Write(frames)
			// The client has nothing more to say: end its side.
			client.Close()
		}()
		b := <-got
		if want := binaryPayloads(frames); !bytes.HasPrefix(want, b) {
			t.Fatalf("MQTT side got %q, not a prefix of the binary payloads %q", b, want)
		}
	})
}
