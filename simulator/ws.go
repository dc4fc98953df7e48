package simulator

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// WebSocketPath is the MQTT-over-WebSocket path of DPS and IoT Hub.
const WebSocketPath = "/$iothub/websocket"

// wsListener serves MQTT over secure WebSockets on path /$iothub/websocket
// with subprotocol "mqtt", exposing the TLS state to the hooks.
type wsListener struct {
	id    string
	ln    net.Listener
	tls   *tls.Config
	srv   *http.Server
	once  sync.Once
	mu    sync.Mutex
	estab listeners.EstablishFn
}

func newWSListener(id string, ln net.Listener, cfg *tls.Config) *wsListener {
	l := &wsListener{id: id, ln: ln, tls: cfg}
	up := &websocket.Upgrader{
		Subprotocols:    []string{"mqtt"},
		CheckOrigin:     func(*http.Request) bool { return true },
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
	}
	mux := http.NewServeMux()
	mux.HandleFunc(WebSocketPath, func(w http.ResponseWriter, r *http.Request) {
		offered := false
		for _, p := range websocket.Subprotocols(r) {
			if p == "mqtt" {
				offered = true
			}
		}
		if !offered {
			http.Error(w, "websocket subprotocol \"mqtt\" required", http.StatusBadRequest)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		var st tls.ConnectionState
		if r.TLS != nil {
			st = *r.TLS
		}
		l.mu.Lock()
		estab := l.estab
		l.mu.Unlock()
		if estab != nil {
			_ = c.UnderlyingConn().SetDeadline(time.Now().Add(connectTimeout))
			_ = estab(l.id, &wsConn{Conn: c.UnderlyingConn(), c: c, state: st})
		}
	})
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	l.srv.SetKeepAlivesEnabled(false)
	return l
}

func (l *wsListener) ID() string              { return l.id }
func (l *wsListener) Address() string         { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string        { return "wss" }
func (l *wsListener) Init(*slog.Logger) error { return nil }

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.estab = establish
	l.mu.Unlock()
	_ = l.srv.Serve(tls.NewListener(l.ln, l.tls))
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		_ = l.srv.Close()
		_ = l.ln.Close()
	})
	closeClients(l.id)
}

// wsConn adapts a websocket to net.Conn (binary frames carry MQTT bytes).
type wsConn struct {
	net.Conn
	c     *websocket.Conn
	r     io.Reader
	state tls.ConnectionState
	wmu   sync.Mutex
}

func (w *wsConn) ConnectionState() tls.ConnectionState { return w.state }

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			op, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT needs binary frames")
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n == 0 {
				continue
			}
			return n, nil
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
