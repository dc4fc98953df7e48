// Package localapi is the agent's Unix-socket API for applications on
// the board: line-delimited JSON requests (send telemetry, report
// properties, status, subscribe) and pushed events (C2D messages,
// desired properties, direct-method calls). docs/local-api.md is the
// protocol reference.
package localapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"devid/agent"
	"devid/dps"
)

// Backend is what the API serves: the agent.
type Backend interface {
	Enqueue(agent.Message) (uint64, error)
	Status() agent.Status
	Report(ctx context.Context, patch []byte) error
	RequestReprovision()
	MethodAdded(name string)
}

// Options configure the server.
type Options struct {
	Path       string
	Group      string
	MaxMessage int
	// MaxClients bounds concurrent connections (default 32);
	// MaxClientsPerUID bounds those of one peer user, told by the kernel
	// (SO_PEERCRED), so that one user cannot take every slot (default 8).
	MaxClients       int
	MaxClientsPerUID int
	// IdleTimeout closes a connection that has sent nothing for that long
	// and subscribed to nothing (default 5m); a subscriber waits for
	// events as long as it likes. ReadTimeout is the time a request line
	// has to arrive whole once its first byte has (default 10s).
	IdleTimeout time.Duration
	ReadTimeout time.Duration
	Logger      *slog.Logger
}

// Defaults of Options.
const (
	DefaultMaxClients       = 32
	DefaultMaxClientsPerUID = 8
	DefaultIdleTimeout      = 5 * time.Minute
	DefaultReadTimeout      = 10 * time.Second
)

// Server serves the socket. It implements agent.LocalSink.
type Server struct {
	opt  Options
	be   Backend
	log  *slog.Logger
	ln   net.Listener
	sem  chan struct{}
	wg   sync.WaitGroup
	call atomic.Uint64

	mu      sync.Mutex
	subSeq  uint64
	clients map[*client]bool
	perUID  map[int64]int // open connections per peer uid (-1: unknown)
	calls   map[string]pendingCall
}

var _ agent.LocalSink = (*Server)(nil)

// pendingCall is a direct-method call forwarded to one client: only that
// client may answer it.
type pendingCall struct {
	callee *client
	result chan methodResult
}

type methodResult struct {
	status  int
	payload []byte
}

// Listen creates the socket (mode 0660, group opt.Group) and returns the
// server; call Serve to accept connections.
func Listen(opt Options, be Backend) (*Server, error) {
	opt = opt.withDefaults()
	log := opt.Logger.With("component", "localapi")
	if err := os.MkdirAll(filepath.Dir(opt.Path), 0o750); err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	// A stale socket from a previous run (kill -9) blocks bind; remove it,
	// but never anything that is not a socket.
	if st, err := os.Lstat(opt.Path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("local api: %s exists and is not a socket", opt.Path)
		}
		os.Remove(opt.Path)
	}
	ln, err := net.Listen("unix", opt.Path)
	if err != nil {
		return nil, fmt.Errorf("local api: %w", err)
	}
	if err := os.Chmod(opt.Path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local api: %w", err)
	}
	if opt.Group != "" {
		if g, err := user.LookupGroup(opt.Group); err != nil {
			log.Warn("local api group not found; the socket keeps the agent's own group (mode 0660), so only that group and root can use it",
				"group", opt.Group, "socket", opt.Path, "gid", os.Getgid())
		} else if gid, _ := strconv.Atoi(g.Gid); os.Chown(opt.Path, -1, gid) != nil {
			log.Warn("cannot give the local api socket to its group; it keeps the agent's own group",
				"group", opt.Group, "socket", opt.Path)
		}
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return newServer(opt, be, ln), nil
}

func (opt Options) withDefaults() Options {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.MaxClients <= 0 {
		opt.MaxClients = DefaultMaxClients
	}
	if opt.MaxClientsPerUID <= 0 {
		opt.MaxClientsPerUID = min(DefaultMaxClientsPerUID, opt.MaxClients)
	}
	if opt.MaxMessage <= 0 {
		opt.MaxMessage = 256 * 1024
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = DefaultIdleTimeout
	}
	if opt.ReadTimeout <= 0 {
		opt.ReadTimeout = DefaultReadTimeout
	}
	return opt
}

// newServer serves ln (a Unix listener, or an in-memory one in tests).
func newServer(opt Options, be Backend, ln net.Listener) *Server {
	opt = opt.withDefaults()
	return &Server{
		opt: opt, be: be, log: opt.Logger.With("component", "localapi"), ln: ln,
		sem:     make(chan struct{}, opt.MaxClients),
		clients: map[*client]bool{},
		perUID:  map[int64]int{},
		calls:   map[string]pendingCall{},
	}
}

// Serve accepts connections until ctx ends, then closes every client.
func (s *Server) Serve(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.ln.Close()
	}()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("local api accept", "err", err)
			}
			break
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.refuse(c, "too many local clients")
			continue
		}
		uid := peerUID(c)
		s.mu.Lock()
		full := s.perUID[uid] >= s.opt.MaxClientsPerUID
		if !full {
			s.perUID[uid]++
		}
		s.mu.Unlock()
		if full {
			<-s.sem
			s.refuse(c, fmt.Sprintf("too many local clients for uid %d (limit %d)", uid, s.opt.MaxClientsPerUID))
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				if s.perUID[uid]--; s.perUID[uid] == 0 {
					delete(s.perUID, uid)
				}
				s.mu.Unlock()
				<-s.sem
			}()
			s.serveConn(ctx, c)
		}()
	}
	s.mu.Lock()
	for cl := range s.clients {
		cl.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// refuse tells a connection why it is not served and closes it. The
// write cannot hold up the accept loop: a deadline bounds it.
func (s *Server) refuse(c net.Conn, why string) {
	s.log.Warn("local client refused", "reason", why)
	b, _ := json.Marshal(reply{Error: why})
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(append(b, '\n'))
	c.Close()
}

type client struct {
	conn    net.Conn
	out     chan []byte
	c2d     bool
	desired bool
	methods map[string]uint64 // name -> subscription order
	dropped int
}

// subscribed says whether the client waits for events (under s.mu).
func (cl *client) subscribed() bool { return cl.c2d || cl.desired || len(cl.methods) > 0 }

// messageMeta is what a message carries besides a text body, the same
// way in both directions: on send requests and on c2d events.
type messageMeta struct {
	BodyBase64      string            `json:"body_base64,omitempty"`
	ContentType     string            `json:"content_type,omitempty"`
	ContentEncoding string            `json:"content_encoding,omitempty"`
	MessageID       string            `json:"message_id,omitempty"`
	Properties      map[string]string `json:"properties,omitempty"`
}

// request is one line from a client.
type request struct {
	ID   json.RawMessage `json:"id,omitempty"`
	Op   string          `json:"op"`
	Body json.RawMessage `json:"body,omitempty"`
	messageMeta
	Patch   json.RawMessage `json:"patch,omitempty"`
	C2D     bool            `json:"c2d,omitempty"`
	Desired bool            `json:"desired,omitempty"`
	Methods []string        `json:"methods,omitempty"`
	Call    string          `json:"call,omitempty"`
	Status  int             `json:"status,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

type reply struct {
	ID     json.RawMessage `json:"id,omitempty"`
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Seq    uint64          `json:"seq,omitempty"`
	Status *agent.Status   `json:"status,omitempty"`
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	cl := &client{conn: conn, out: make(chan []byte, 64), methods: map[string]uint64{}}
	s.mu.Lock()
	s.clients[cl] = true
	s.mu.Unlock()
	wrote := make(chan struct{})
	defer func() {
		s.mu.Lock()
		delete(s.clients, cl)
		close(cl.out)
		s.mu.Unlock()
		// Let the writer flush the replies already queued (a client that
		// half-closes after its request still gets the answer).
		select {
		case <-wrote:
		case <-time.After(10 * time.Second):
		}
		conn.Close()
	}()
	go func() {
		defer close(wrote)
		var batch []byte
		for b := range cl.out {
			// Replies queued meanwhile go out in the same write: a
			// client that pipelines its sends gets one write per batch,
			// not one per reply (docs/benchmarks.md).
			batch = append(batch[:0], b...)
		gather:
			for len(batch) < 64<<10 {
				select {
				case more, ok := <-cl.out:
					if !ok {
						break gather
					}
					batch = append(batch, more...)
				default:
					break gather
				}
			}
			conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(batch); err != nil {
				conn.Close()
				for range cl.out {
				}
				return
			}
		}
	}()
	// A line holds at most one message, base64 inflated, plus envelope
	// (the properties: up to a topic's 64 KiB).
	maxLine := s.opt.MaxMessage*4/3 + 128*1024
	r := bufio.NewReaderSize(conn, 4096)
	for {
		// Waiting for a request: a subscriber may wait forever (it waits
		// for events), any other connection only IdleTimeout, so idle
		// clients cannot hold every slot.
		s.mu.Lock()
		subscribed := cl.subscribed()
		s.mu.Unlock()
		var idle time.Time
		if !subscribed {
			idle = time.Now().Add(s.opt.IdleTimeout)
		}
		conn.SetReadDeadline(idle)
		if _, err := r.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.log.Info("idle local client closed", "idle", s.opt.IdleTimeout)
			}
			return
		}
		// A request has begun: it must arrive whole within ReadTimeout.
		conn.SetReadDeadline(time.Now().Add(s.opt.ReadTimeout))
		line, err := readLine(r, maxLine)
		if err != nil {
			msg := ""
			switch {
			case errors.Is(err, errLineTooLong):
				msg = err.Error()
			case errors.Is(err, os.ErrDeadlineExceeded):
				msg = fmt.Sprintf("request line not finished within %s", s.opt.ReadTimeout)
				s.log.Warn("local client closed: request line not finished in time", "timeout", s.opt.ReadTimeout)
			}
			if msg != "" {
				b, _ := json.Marshal(reply{Error: msg})
				cl.out <- append(b, '\n')
			}
			return
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		// Replies block (back-pressure on this client's own requests);
		// pushed events never do (see send).
		b, _ := json.Marshal(s.handle(ctx, cl, line))
		cl.out <- append(b, '\n')
	}
}

var errLineTooLong = errors.New("request line too long")

// readLine reads one request line without its "\n" (or "\r\n"). A last
// line the client ended with EOF instead of a newline counts; a line cut
// off by any other error (a deadline) is an error, not a request.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max+2 {
			return nil, fmt.Errorf("%w (limit %d bytes)", errLineTooLong, max)
		}
		switch {
		case err == nil:
			line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil
		default:
			return nil, err
		}
	}
}

func (s *Server) send(cl *client, v any) {
	b, _ := json.Marshal(v)
	b = append(b, '\n')
	select {
	case cl.out <- b:
	default:
		cl.dropped++
		s.log.Warn("local client too slow; event dropped", "dropped", cl.dropped)
	}
}

// decodeRequest parses one request line and checks it.
func decodeRequest(line []byte) (*request, error) {
	var req request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("not a JSON request: %v", err)
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value on the line")
	}
	if req.Op == "" {
		return nil, errors.New(`missing "op"`)
	}
	return &req, nil
}

// messageFrom builds the telemetry message of a send request.
func messageFrom(req *request, max int) (agent.Message, error) {
	m := agent.Message{ContentType: req.ContentType, ContentEncoding: req.ContentEncoding,
		MessageID: req.MessageID, Properties: req.Properties}
	switch {
	case req.BodyBase64 != "" && len(req.Body) > 0:
		return m, errors.New(`give "body" or "body_base64", not both`)
	case req.BodyBase64 != "":
		b, err := base64.StdEncoding.DecodeString(req.BodyBase64)
		if err != nil {
			return m, fmt.Errorf("body_base64: %v", err)
		}
		m.Body = b
	case len(req.Body) > 0 && req.Body[0] == '"':
		var str string
		if err := json.Unmarshal(req.Body, &str); err != nil {
			return m, fmt.Errorf("body: %v", err)
		}
		m.Body = []byte(str)
	case len(req.Body) > 0:
		// Any other JSON value is sent as a JSON document.
		var buf bytes.Buffer
		if err := json.Compact(&buf, req.Body); err != nil {
			return m, fmt.Errorf("body: %v", err)
		}
		m.Body = buf.Bytes()
		if m.ContentType == "" {
			m.ContentType = "application/json"
		}
		if m.ContentEncoding == "" {
			m.ContentEncoding = "utf-8"
		}
	default:
		return m, errors.New(`send needs "body" or "body_base64"`)
	}
	if len(m.Body) > max {
		return m, fmt.Errorf("body is %d bytes; the limit is %d", len(m.Body), max)
	}
	for k := range m.Properties {
		if k == "" || len(k) > 128 {
			return m, fmt.Errorf("property name %q is empty or too long", k)
		}
	}
	return m, checkHubLimits(m)
}

// Limits of the hub's wire, checked here so that a message the hub would
// refuse for good, or one the MQTT library would cut, is refused to its
// sender instead of blocking the queue. The properties travel in the
// MQTT topic, which is at most 65,535 bytes; IoT Hub takes at most 256 KB
// of body and properties together. Both are counted on the topic as the
// agent sends it, with the longest device ID IoT Hub allows (128
// characters), so that the answer does not depend on the identity the
// device holds today.
const (
	maxTopicBytes  = 65535
	maxDeviceIDLen = 128
)

var worstDeviceID = strings.Repeat("d", maxDeviceIDLen)

func checkHubLimits(m agent.Message) error {
	topic := dps.TelemetryTopic(worstDeviceID, &dps.Message{Payload: m.Body, MessageID: m.MessageID,
		ContentType: m.ContentType, ContentEncoding: m.ContentEncoding, Properties: m.Properties})
	if len(topic) > maxTopicBytes {
		return fmt.Errorf("properties take %d bytes encoded in the MQTT topic; the topic limit is %d bytes", len(topic), maxTopicBytes)
	}
	if n := len(topic) + len(m.Body); n > dps.MaxTelemetrySize {
		return fmt.Errorf("body and properties take %d bytes on the wire; IoT Hub's limit is %d (256 KB)", n, dps.MaxTelemetrySize)
	}
	return nil
}

func (s *Server) handle(ctx context.Context, cl *client, line []byte) reply {
	req, err := decodeRequest(line)
	if err != nil {
		return reply{Error: err.Error()}
	}
	rep := reply{ID: req.ID}
	fail := func(err error) reply { rep.Error = err.Error(); return rep }
	switch req.Op {
	case "send":
		m, err := messageFrom(req, s.opt.MaxMessage)
		if err != nil {
			return fail(err)
		}
		seq, err := s.be.Enqueue(m)
		if err != nil {
			return fail(err)
		}
		rep.Seq = seq
	case "status":
		st := s.be.Status()
		rep.Status = &st
	case "report":
		if len(req.Patch) == 0 || req.Patch[0] != '{' {
			return fail(errors.New(`report needs "patch": a JSON object`))
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s.be.Report(rctx, req.Patch); err != nil {
			return fail(err)
		}
	case "subscribe":
		s.mu.Lock()
		cl.c2d = cl.c2d || req.C2D
		cl.desired = cl.desired || req.Desired
		var added []string
		for _, name := range req.Methods {
			if name == "" || len(name) > 128 {
				s.mu.Unlock()
				return fail(fmt.Errorf("method name %q is empty or too long", name))
			}
			if cl.methods[name] == 0 {
				s.subSeq++
				cl.methods[name] = s.subSeq
				added = append(added, name)
			}
		}
		s.mu.Unlock()
		for _, name := range added {
			s.be.MethodAdded(name)
		}
	case "method_response":
		// A call is answered only by the connection it was sent to:
		// another client must not put words in its mouth.
		s.mu.Lock()
		pc, ok := s.calls[req.Call]
		if ok && pc.callee == cl {
			delete(s.calls, req.Call)
		}
		s.mu.Unlock()
		if !ok || pc.callee != cl {
			return fail(fmt.Errorf("no pending method call %q on this connection (timed out, answered, or sent to another client)", req.Call))
		}
		status := req.Status
		if status == 0 {
			status = 200
		}
		pc.result <- methodResult{status: status, payload: req.Payload}
	case "reprovision":
		s.be.RequestReprovision()
	default:
		return fail(fmt.Errorf("unknown op %q (send, status, report, subscribe, method_response, reprovision)", req.Op))
	}
	rep.OK = true
	return rep
}

type event struct {
	Event string `json:"event"`
	Body  string `json:"body,omitempty"`
	messageMeta
	Patch   json.RawMessage `json:"patch,omitempty"`
	Call    string          `json:"call,omitempty"`
	Name    string          `json:"name,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// C2D pushes a cloud-to-device message to every subscribed client.
func (s *Server) C2D(m agent.Message) {
	ev := event{Event: "c2d", messageMeta: messageMeta{ContentType: m.ContentType, ContentEncoding: m.ContentEncoding,
		MessageID: m.MessageID, Properties: m.Properties}}
	if json.Valid(m.Body) || isUTF8Text(m.Body) {
		ev.Body = string(m.Body)
	} else {
		ev.BodyBase64 = base64.StdEncoding.EncodeToString(m.Body)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for cl := range s.clients {
		if cl.c2d {
			s.send(cl, ev)
		}
	}
}

// Desired pushes a desired-properties patch to every subscribed client.
func (s *Server) Desired(patch []byte) {
	ev := event{Event: "desired", Patch: json.RawMessage(patch)}
	if !json.Valid(patch) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for cl := range s.clients {
		if cl.desired {
			s.send(cl, ev)
		}
	}
}

// MethodNames lists the methods clients handle.
func (s *Server) MethodNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var names []string
	for cl := range s.clients {
		for n := range cl.methods {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	return names
}

// Method forwards a direct-method call to the most recent client that
// subscribed to name and waits for its method_response.
func (s *Server) Method(ctx context.Context, name string, payload []byte) (int, []byte, bool) {
	id := "c-" + strconv.FormatUint(s.call.Add(1), 10)
	ch := make(chan methodResult, 1)
	s.mu.Lock()
	var target *client
	var newest uint64
	for cl := range s.clients {
		if seq := cl.methods[name]; seq > newest {
			target, newest = cl, seq
		}
	}
	if target == nil {
		s.mu.Unlock()
		return 0, nil, false
	}
	s.calls[id] = pendingCall{callee: target, result: ch}
	p := json.RawMessage(payload)
	if len(payload) == 0 || !json.Valid(payload) {
		p = nil
	}
	s.send(target, event{Event: "method", Call: id, Name: name, Payload: p})
	s.mu.Unlock()
	select {
	case r := <-ch:
		return r.status, r.payload, true
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.calls, id)
		s.mu.Unlock()
		return 504, []byte(`{"error":"the local application did not answer in time"}`), true
	}
}

func isUTF8Text(b []byte) bool {
	for _, c := range string(b) {
		if c == 0xFFFD || (c < 0x20 && c != '\n' && c != '\r' && c != '\t') {
			return false
		}
	}
	return true
}
