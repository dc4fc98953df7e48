package line

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether w is a terminal (live lines are rewritten
// in place there).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// writeJSONLine writes v as one line of JSON. A failing writer (a closed
// pipe to line software) does not stop the station.
func writeJSONLine(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	_, _ = w.Write(append(b, '\n'))
}

// terminal draws one line per slot: rewritten in place on a TTY, one
// printed line per event otherwise.
type terminal struct {
	w     io.Writer
	tty   bool
	drawn int
}

// redraw shows ev (plain output) or every slot's line (a TTY). The caller
// holds emitMu.
func (s *Station) redraw(ev Event) {
	t := s.term
	if t == nil {
		return
	}
	if !t.tty {
		if ev.Type != "" {
			fmt.Fprintln(t.w, eventLine(ev))
		}
		return
	}
	snap := s.Snapshot()
	var b strings.Builder
	if t.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", t.drawn)
	}
	for _, v := range snap.Slots {
		fmt.Fprintf(&b, "\r\x1b[2K%s\n", slotLine(v))
	}
	y := snap.Yield
	fmt.Fprintf(&b, "\r\x1b[2K%d programmed, %d left alone, %d failed, yield %.1f%%\n", y.Programmed, y.LeftAlone, y.FailedTotal(), y.Percent())
	t.drawn = len(snap.Slots) + 1
	io.WriteString(t.w, b.String())
}

// slotLine is a slot's live line.
func slotLine(v SlotView) string {
	line := fmt.Sprintf("%-8s %-12s", v.Name, v.State)
	if v.Step != "" {
		line += fmt.Sprintf(" [%s]", v.Step)
	}
	if v.DeviceID != "" {
		line += " " + v.DeviceID
	}
	if v.Serial != "" {
		line += " serial " + v.Serial
	}
	if v.Cause != "" {
		line += " cause " + v.Cause
	}
	if v.Detail != "" {
		line += ": " + firstLine(v.Detail, 100)
	}
	return line
}

// eventLine is one event as a plain line.
func eventLine(ev Event) string {
	s := fmt.Sprintf("%s slot %s %s", ev.Time.Format("15:04:05.000"), ev.Slot, ev.Type)
	switch ev.Type {
	case EventPlugged, EventUnplugged:
		s += " " + ev.Port
	case EventStep:
		s += fmt.Sprintf(" %s (%d ms): %s", ev.Step, ev.StepMS, ev.Detail)
	case EventProgrammed:
		s += fmt.Sprintf(" %s serial %s in %d ms", ev.DeviceID, ev.Serial, ev.ElapsedMS)
		if ev.AlreadyProgrammed {
			s += " (programmed already, left alone)"
		}
	case EventFailed:
		s += fmt.Sprintf(" at %s, cause %s: %s", ev.Step, ev.Cause, firstLine(ev.Error, 200))
	case EventFault:
		s += ": " + ev.Error
	}
	return s
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
