package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/agent"
)

type fakeBackend struct {
	mu      sync.Mutex
	msgs    []agent.Message
	reports [][]byte
	reprov  int
	methods []string
}

func (f *fakeBackend) Enqueue(m agent.Message) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, m)
	return uint64(len(f.msgs)), nil
}
func (f *fakeBackend) Status() agent.Status {
	return agent.Status{State: "connected", DeviceID: "dev1"}
}
func (f *fakeBackend) Report(_ context.Context, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, p)
	return nil
}
func (f *fakeBackend) RequestReprovision() { f.mu.Lock(); f.reprov++; f.mu.Unlock() }
func (f *fakeBackend) MethodAdded(n string) {
	f.mu.Lock()
	f.methods = append(f.methods, n)
	f.mu.Unlock()
}

// socketPath is a socket path in a fresh directory under the system temp
// dir (t.TempDir paths can exceed the unix socket path limit).
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "api.sock")
}

func start(t *testing.T) (*Server, *fakeBackend, string) {
	t.Helper()
	path := socketPath(t)
	be := &fakeBackend{}
	s := listenServe(t, Options{Path: path, Group: "no-such-group-devid", MaxMessage: 1024}, be)
	return s, be, path
}

// listenServe starts a server on opt.Path until the test ends.
func listenServe(t *testing.T, opt Options, be Backend) *Server {
	t.Helper()
	s, err := Listen(opt, be)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Scanner
}

func dial(t *testing.T, path string) *conn {
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &conn{t: t, c: c, r: bufio.NewScanner(c)}
}

func (c *conn) roundTrip(req string) map[string]any {
	c.t.Helper()
	if _, err := c.c.Write([]byte(req + "\n")); err != nil {
		c.t.Fatal(err)
	}
	return c.read()
}

func (c *conn) read() map[string]any {
	c.t.Helper()
	if !c.r.Scan() {
		c.t.Fatalf("no reply: %v", c.r.Err())
	}
	var m map[string]any
	if err := json.Unmarshal(c.r.Bytes(), &m); err != nil {
		c.t.Fatalf("reply %q: %v", c.r.Bytes(), err)
	}
	return m
}

func TestSendStatusReport(t *testing.T) {
	t.Parallel()
	_, be, path := start(t)
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %o", st.Mode().Perm())
	}
	c := dial(t, path)
	if r := c.roundTrip(`{"id":1,"op":"send","body":{"temp":21.5},"properties":{"kind":"t"}}`); r["ok"] != true || r["seq"] != 1.0 || r["id"] != 1.0 {
		t.Fatalf("send: %v", r)
	}
	if r := c.roundTrip(`{"op":"send","body":"hello"}`); r["ok"] != true {
		t.Fatalf("send text: %v", r)
	}
	if r := c.roundTrip(`{"op":"send","body_base64":"AAEC"}`); r["ok"] != true {
		t.Fatalf("send b64: %v", r)
	}
	be.mu.Lock()
	if string(be.msgs[0].Body) != `{"temp":21.5}` || be.msgs[0].ContentType != "application/json" || be.msgs[0].Properties["kind"] != "t" ||
		string(be.msgs[1].Body) != "hello" || len(be.msgs[2].Body) != 3 {
		t.Fatalf("messages %+v", be.msgs)
	}
	be.mu.Unlock()
	if r := c.roundTrip(`{"op":"status"}`); r["ok"] != true || r["status"].(map[string]any)["state"] != "connected" {
		t.Fatalf("status: %v", r)
	}
	if r := c.roundTrip(`{"op":"report","patch":{"fw":"1.2"}}`); r["ok"] != true {
		t.Fatalf("report: %v", r)
	}
	for _, bad := range []string{`nonsense`, `{"op":"fly"}`, `{"op":"send"}`, `{"op":"send","body":"` + string(make([]byte, 0)) + `x","bogus":1}`,
		`{"op":"report","patch":[1]}`, `{"op":"send","body":"x","body_base64":"eA=="}`} {
		if r := c.roundTrip(bad); r["ok"] != false || r["error"] == "" {
			t.Errorf("%s: %v", bad, r)
		}
	}
}

func TestSubscribeAndMethods(t *testing.T) {
	t.Parallel()
	s, be, path := start(t)
	app := dial(t, path)
	if r := app.roundTrip(`{"op":"subscribe","c2d":true,"desired":true,"methods":["reboot"]}`); r["ok"] != true {
		t.Fatalf("subscribe: %v", r)
	}
	if names := s.MethodNames(); len(names) != 1 || names[0] != "reboot" {
		t.Fatalf("names %v", names)
	}
	be.mu.Lock()
	if len(be.methods) != 1 {
		t.Fatalf("MethodAdded not called: %v", be.methods)
	}
	be.mu.Unlock()
	s.C2D(agent.Message{Body: []byte("to device"), Properties: map[string]string{"a": "b"}})
	if ev := app.read(); ev["event"] != "c2d" || ev["body"] != "to device" {
		t.Fatalf("c2d event %v", ev)
	}
	s.Desired([]byte(`{"interval":5,"$version":3}`))
	if ev := app.read(); ev["event"] != "desired" {
		t.Fatalf("desired event %v", ev)
	}
	type res struct {
		st int
		p  []byte
		ok bool
	}
	done := make(chan res, 1)
	go func() {
		st, p, ok := s.Method(context.Background(), "reboot", []byte(`{"delay":1}`))
		done <- res{st, p, ok}
	}()
	ev := app.read()
	if ev["event"] != "method" || ev["name"] != "reboot" {
		t.Fatalf("method event %v", ev)
	}
	if r := app.roundTrip(`{"op":"method_response","call":"` + ev["call"].(string) + `","status":202,"payload":{"ok":1}}`); r["ok"] != true {
		t.Fatalf("method_response: %v", r)
	}
	r := <-done
	if !r.ok || r.st != 202 || string(r.p) != `{"ok":1}` {
		t.Fatalf("method result %+v", r)
	}
	if _, _, ok := s.Method(context.Background(), "unknown", nil); ok {
		t.Fatal("unknown method claimed")
	}
}

// FuzzDecodeRequest feeds arbitrary request lines through the decoder and
// the whole request handler: no panic, every error says something, and
// nothing over the body or hub limits reaches the queue.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"op":"send","body":{"a":1}}`))
	f.Add([]byte(`{"op":"send","body":"text","properties":{"k":"v"}}`))
	f.Add([]byte(`{"op":"send","body_base64":"AAE="}`))
	f.Add([]byte(`{"op":"send","body":"x","properties":{"` + strings.Repeat("n", 129) + `":"v"}}`))
	f.Add([]byte(`{"op":"send","body":"x","properties":{"a":"` + strings.Repeat("%", 22000) + `"}}`))
	f.Add([]byte(`{"op":"subscribe","c2d":true,"desired":true,"methods":["x"]}`))
	f.Add([]byte(`{"op":"method_response","call":"c-1","status":200,"payload":null}`))
	f.Add([]byte(`{"op":"report","patch":{"fw":"1"}}`))
	f.Add([]byte(`{"op":"status"} {"op":"status"}`))
	f.Add([]byte(`{"id":[1,{"a":null}],"op":"reprovision"}`))
	f.Add([]byte(`{}`))
	const maxBody = 1024
	f.Fuzz(func(t *testing.T, b []byte) {
		if req, err := decodeRequest(b); err == nil {
			if req.Op == "" {
				t.Fatal("accepted a request without op")
			}
			if req.Op == "send" {
				m, err := messageFrom(req, maxBody)
				if err == nil && (len(m.Body) > maxBody || checkHubLimits(m) != nil) {
					t.Fatalf("message over the limits accepted: %d bytes", len(m.Body))
				}
			}
		}
		be := &fakeBackend{}
		s := newServer(Options{MaxMessage: maxBody}, be, newPipeListener())
		rep := s.handle(t.Context(), &client{methods: map[string]uint64{}}, b)
		if !rep.OK && rep.Error == "" {
			t.Fatalf("refused without an error: %+v", rep)
		}
		for _, m := range be.msgs {
			if len(m.Body) > maxBody || checkHubLimits(m) != nil {
				t.Fatalf("message over the limits queued: %d bytes", len(m.Body))
			}
		}
	})
}
