package line_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/enroll/station/internal/catest"
	"devid/enroll/station/line"
	"devid/hal/serial"
)

// newCA and rootPool: the shared test CA (enroll/station/internal/catest).
var (
	newCA    = catest.New
	rootPool = catest.RootPool
)

// serveDevice serves a factory device with id on port until the test
// ends (or, with die > 0, until it has written die bytes: a board that
// dies mid-way).
func serveDevice(t testing.TB, port serial.Port, id string, roots *x509.CertPool, die int) *factory.Device {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, roots),
		Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	if die > 0 {
		port = &dyingPort{Port: port, left: die}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, port) }()
	t.Cleanup(func() {
		cancel()
		err := <-done
		if die == 0 && !errors.Is(err, context.Canceled) {
			t.Errorf("device %s: Serve returned %v, want context.Canceled", id, err)
		}
	})
	return d
}

// dyingPort stops writing (the board lost power) after left bytes.
type dyingPort struct {
	serial.Port
	mu   sync.Mutex
	left int
}

func (p *dyingPort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(b) > p.left {
		p.left = 0
		return 0, errors.New("board died")
	}
	p.left -= len(b)
	return p.Port.Write(b)
}

// serveGarbage answers every line on port with noise, as a board running
// other firmware would.
func serveGarbage(t testing.TB, port *os.File) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd := bufio.NewReader(port)
		for {
			if _, err := rd.ReadString('\n'); err != nil {
				return
			}
			if _, err := port.WriteString("U-Boot 2024.01 garbage \x01\x02 ready>\n"); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { port.SetReadDeadline(time.Now()); <-done })
}

// plug makes the by-id link name in dir point at tty: the board arrives.
func plug(t testing.TB, dir, name, tty string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(tty, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// events collects the station's JSON events.
type events struct {
	t  testing.TB
	pw *io.PipeWriter
	c  chan line.Event
}

func newEvents(t testing.TB) *events {
	pr, pw := io.Pipe()
	e := &events{t: t, pw: pw, c: make(chan line.Event, 4096)}
	go func() {
		dec := json.NewDecoder(pr)
		for {
			var ev line.Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			e.c <- ev
		}
	}()
	t.Cleanup(func() { pw.Close() })
	return e
}

func (e *events) Write(b []byte) (int, error) { return e.pw.Write(b) }

// next returns the next event of one of the given types, skipping others.
func (e *events) next(ctx context.Context, types ...string) line.Event {
	e.t.Helper()
	for {
		select {
		case ev := <-e.c:
			for _, ty := range types {
				if ev.Type == ty {
					return ev
				}
			}
		case <-ctx.Done():
			e.t.Fatalf("no %v event: %v", types, ctx.Err())
		}
	}
}

// drain returns the events already received.
func (e *events) drain() []line.Event {
	var out []line.Event
	for {
		select {
		case ev := <-e.c:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func slotsConfig(serialDir string, ports ...string) *line.Config {
	c := &line.Config{Station: "test-station", SerialDir: serialDir, Watch: line.WatchPoll,
		ScanInterval: 20 * time.Millisecond, ReplyTimeout: 3 * time.Second, Retries: 2}
	for i, p := range ports {
		c.Slots = append(c.Slots, line.SlotConfig{Name: fmt.Sprintf("s%d", i+1), Port: p})
	}
	return c
}

// drainWait returns the final event (programmed or failed) of n runs.
func (e *events) drainWait(ctx context.Context, n int) []line.Event {
	e.t.Helper()
	var out []line.Event
	for len(out) < n {
		out = append(out, e.next(ctx, line.EventProgrammed, line.EventFailed))
	}
	return out
}
