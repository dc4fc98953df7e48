package line_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"devid/enroll/station/ca"
	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// panicPort panics on the first write: a bug in one slot's run.
type panicPort struct{ serial.Port }

func (panicPort) Write([]byte) (int, error) { panic("slot bug") }

// syncBuffer is a goroutine-safe terminal.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestEightBoardsAtOnce: one station, 8 good boards and three faulty
// slots (garbage on the line, a board that dies during INSTALL, a panicking
// run). All 8 are programmed with distinct serials in the ledger, the
// faults fail alone with their causes, a board that stays plugged is not
// programmed again, and one that is replugged is left alone.
func TestEightBoardsAtOnce(t *testing.T) {
	l := newCA(t)
	roots := rootPool(l)
	serialDir := t.TempDir()
	byID := filepath.Join(serialDir, "by-id")

	const good = 8
	var ports []string
	ttys := map[string]string{}
	for i := 1; i <= good; i++ {
		pair := serialtest.Pty(t)
		serveDevice(t, pair.Master, fmt.Sprintf("board-%04d", i), roots, 0)
		name := fmt.Sprintf("usb-FTDI_FT4232H_SLOT%d-if00-port0", i)
		ttys[name] = pair.TTY
		ports = append(ports, fmt.Sprintf("by-id/usb-FTDI_*_SLOT%d-if00-port0", i))
	}
	garbage := serialtest.Pty(t)
	serveGarbage(t, garbage.Master)
	ttys["garbage"] = garbage.TTY
	dying := serialtest.Pty(t)
	serveDevice(t, dying.Master, "board-dying", roots, 600)
	ttys["dying"] = dying.TTY
	panicky := serialtest.Pty(t)
	ttys["panic"] = panicky.TTY
	ports = append(ports, "by-id/garbage", "by-id/dying", filepath.Join(byID, "panic"))

	cfg := slotsConfig(serialDir, ports...)
	ev := newEvents(t)
	term := &syncBuffer{}
	st, err := line.New(cfg, line.Options{CA: l, Ledger: l, Jig: jig.Options{Roots: roots}, Events: ev, Terminal: term,
		Open: func(path string, baud int) (serial.Port, error) {
			p, err := serial.Open(path, baud)
			if err == nil && strings.HasSuffix(path, "/panic") {
				return panicPort{p}, nil
			}
			return p, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runDone := make(chan line.Yield, 1)
	go func() {
		y, err := st.Run(ctx)
		if err != nil {
			t.Error(err)
		}
		runDone <- y
	}()
	// The boards arrive while the station runs.
	for name, tty := range ttys {
		plug(t, byID, name, tty)
	}
	programmed := map[string]string{} // device ID -> serial
	failed := map[string]line.Event{} // slot -> event
	for range good + 3 {
		e := ev.next(ctx, line.EventProgrammed, line.EventFailed)
		if e.Type == line.EventProgrammed {
			if e.AlreadyProgrammed {
				t.Errorf("slot %s: fresh board left alone", e.Slot)
			}
			programmed[e.DeviceID] = e.Serial
		} else {
			failed[e.Slot] = e
		}
	}
	if len(programmed) != good {
		t.Fatalf("programmed %d boards (%v), want %d; failed %+v", len(programmed), programmed, good, failed)
	}
	for slot, want := range map[string]struct {
		step  jig.Step
		cause string
	}{"s9": {jig.StepHello, line.CauseNoReply}, "s10": {jig.StepInstall, line.CauseNoReply}, "s11": {jig.StepHello, line.CausePanic}} {
		e, ok := failed[slot]
		if !ok || e.Step != want.step || e.Cause != want.cause {
			t.Errorf("slot %s: failure %+v, want step %s cause %s", slot, e, want.step, want.cause)
		}
	}
	if e := failed["s11"]; !strings.Contains(e.Error, "slot bug") {
		t.Errorf("panic failure does not say what panicked: %q", e.Error)
	}
	serials := map[string]bool{}
	for i := 1; i <= good; i++ {
		id := fmt.Sprintf("board-%04d", i)
		recs, err := l.Issued(id)
		if err != nil || len(recs) != 1 || recs[0].Serial != programmed[id] {
			t.Fatalf("ledger for %s: %+v, %v; station reported serial %s", id, recs, err, programmed[id])
		}
		serials[recs[0].Serial] = true
	}
	if len(serials) != good {
		t.Fatalf("%d distinct serials in the ledger, want %d", len(serials), good)
	}
	y := st.Yield()
	if y.Programmed != good || y.FailedTotal() != 3 || y.Failed[line.CauseNoReply] != 2 || y.Failed[line.CausePanic] != 1 {
		t.Fatalf("yield %+v", y)
	}

	// Boards that stay plugged are not programmed again, whatever the
	// number of scans.
	ev.drain()
	st.ScanNow()
	st.ScanNow()
	if extra := ev.drain(); len(extra) != 0 {
		t.Fatalf("scans of plugged boards made events %+v", extra)
	}

	// Unplug slot 1 and plug it back: the board is seen again and, as it
	// holds a valid certificate from this CA, left alone.
	link := filepath.Join(byID, "usb-FTDI_FT4232H_SLOT1-if00-port0")
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	st.ScanNow()
	if e := ev.next(ctx, line.EventUnplugged, line.EventPlugged); e.Type != line.EventUnplugged || e.Slot != "s1" {
		t.Fatalf("after unplugging: %+v", e)
	}
	plug(t, byID, "usb-FTDI_FT4232H_SLOT1-if00-port0", ttys["usb-FTDI_FT4232H_SLOT1-if00-port0"])
	st.ScanNow()
	if e := ev.next(ctx, line.EventPlugged); e.Slot != "s1" {
		t.Fatalf("after replugging: %+v", e)
	}
	if e := ev.next(ctx, line.EventProgrammed, line.EventFailed); e.Type != line.EventProgrammed || !e.AlreadyProgrammed || e.Serial != programmed["board-0001"] {
		t.Fatalf("replugged programmed board: %+v", e)
	}

	// The page's ledger search finds a serial the station did not issue.
	other, err := ca.Open(caDirOf(t, l), "other")
	if err != nil {
		t.Fatal(err)
	}
	checkSerialSearch(t, st, other)
	other.Close()

	// /metrics has the counters.
	srv := httptest.NewServer(st.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"devid_station_boards_programmed_total 8\n",
		"devid_station_boards_left_alone_total 1\n",
		`devid_station_boards_failed_total{cause="no-reply",step="hello"} 1` + "\n",
		`devid_station_boards_failed_total{cause="no-reply",step="install"} 1` + "\n",
		`devid_station_boards_failed_total{cause="panic",step="hello"} 1` + "\n",
		`devid_station_step_seconds_count{step="install"} 8` + "\n",
		`devid_station_step_seconds_count{step="hello"} 10` + "\n",
		// The dying board was issued a certificate it never installed.
		"devid_station_issuance_seconds_count 9\n",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}

	cancel()
	y = <-runDone
	if y.Programmed != good || y.LeftAlone != 1 {
		t.Fatalf("final yield %+v", y)
	}
	sum := y.Summary("test-station")
	if !strings.Contains(sum, "8 programmed, 1 left alone") || !strings.Contains(sum, "no-reply") {
		t.Fatalf("summary %q", sum)
	}
	if out := term.String(); !strings.Contains(out, "slot s3 programmed board-0003") {
		t.Fatalf("terminal output lacks the programmed line:\n%s", out)
	}
}

// TestGlobMatchingTwoPortsIsAFault: a slot whose glob matches two ports
// is reported, and recovers when one goes.
func TestGlobMatchingTwoPortsIsAFault(t *testing.T) {
	l := newCA(t)
	dir := t.TempDir()
	a, b := serialtest.Pty(t), serialtest.Pty(t)
	plug(t, filepath.Join(dir, "by-path"), "port-a", a.TTY)
	plug(t, filepath.Join(dir, "by-path"), "port-b", b.TTY)
	ev := newEvents(t)
	st, err := line.New(slotsConfig(dir, "by-path/port-*"), line.Options{CA: l, Events: ev})
	if err != nil {
		t.Fatal(err)
	}
	st.ScanNow()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := ev.next(ctx, line.EventFault, line.EventPlugged)
	if e.Type != line.EventFault || !strings.Contains(e.Error, "matches 2 ports") {
		t.Fatalf("event %+v", e)
	}
	if s := st.Snapshot().Slots[0]; s.State != line.StateFault {
		t.Fatalf("slot %+v", s)
	}
	os.Remove(filepath.Join(dir, "by-path", "port-b"))
	st.ScanNow() // Run is not running: the board is seen, not programmed
	if e := ev.next(ctx, line.EventFault, line.EventPlugged); e.Type != line.EventPlugged || e.Port != filepath.Join(dir, "by-path", "port-a") {
		t.Fatalf("event %+v", e)
	}
}

func TestParseConfig(t *testing.T) {
	c, err := line.ParseConfig([]byte(`
station = "line1-st3"
ca_dir = "/srv/devid-ca"
scan_interval = "250ms"
reply_timeout = "2s"
listen = "127.0.0.1:8080"
[[slot]]
name = "A"
port = "by-id/usb-FTDI_*_A-if00-port0"
[[slot]]
port = "/dev/ttyUSB7"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Station != "line1-st3" || c.ScanInterval != 250*time.Millisecond || c.ReplyTimeout != 2*time.Second ||
		c.Baud != line.DefaultBaud || c.Watch != line.WatchAuto || c.SerialDir != line.DefaultSerialDir ||
		len(c.Slots) != 2 || c.Slots[1].Name != "2" {
		t.Fatalf("config %+v", c)
	}
	for _, bad := range []struct{ toml, want string }{
		{``, "no [[slot]]"},
		{"[[slot]]\nname = \"a\"", "no port"},
		{"[[slot]]\nport = \"x[\"", "not a valid glob"},
		{"[[slot]]\nport = \"x\"\n[[slot]]\nport = \"x\"", "another slot too"},
		{"[[slot]]\nname = \"a\"\nport = \"x\"\n[[slot]]\nname = \"a\"\nport = \"y\"", "used by another slot"},
		{"scan_interval = \"soon\"\n[[slot]]\nport = \"x\"", "scan_interval"},
		{"watch = \"inotify\"\n[[slot]]\nport = \"x\"", "watch"},
		{"slots = 3", "slots"},
	} {
		if _, err := line.ParseConfig([]byte(bad.toml)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want one naming %q", bad.toml, err, bad.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[[slot]]\nport = \"by-id/*\"\n"))
	f.Add([]byte("station = \"a\"\nscan_interval = \"1s\"\n[[slot]]\nname = \"A\"\nport = \"/dev/ttyUSB0\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := line.ParseConfig(b)
		if err != nil {
			return
		}
		if len(c.Slots) == 0 || c.ScanInterval <= 0 || c.Baud <= 0 {
			t.Fatalf("accepted config %+v", c)
		}
		for _, s := range c.Slots {
			if s.Name == "" || s.Port == "" {
				t.Fatalf("accepted slot %+v", s)
			}
		}
	})
}

// TestTerminalRewritesLinesOnATTY: on a terminal each event redraws one
// line per slot and the yield line in place (cursor up, clear line).
func TestTerminalRewritesLinesOnATTY(t *testing.T) {
	l := newCA(t)
	dir := t.TempDir()
	a := serialtest.Pty(t)
	plug(t, filepath.Join(dir, "by-id"), "a", a.TTY)
	term := &syncBuffer{}
	st, err := line.New(slotsConfig(dir, "by-id/a", "by-id/b"), line.Options{CA: l, Terminal: term, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	st.ScanNow() // plugged
	os.Remove(filepath.Join(dir, "by-id", "a"))
	st.ScanNow() // unplugged
	out := term.String()
	// One draw per event: the first has no cursor-up, the next moves up 3 lines
	// (two slots and the yield line).
	if !strings.Contains(out, "\x1b[3A") || !strings.Contains(out, "\r\x1b[2Ks1       plugged") ||
		!strings.Contains(out, "\r\x1b[2Ks2       empty") || !strings.Contains(out, "0 programmed, 0 left alone, 0 failed") {
		t.Fatalf("terminal output %q", out)
	}
}
