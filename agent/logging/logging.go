// Package logging builds the agent's *slog.Logger.
//
//   - Under systemd (stderr is the journal: JOURNAL_STREAM names it), each
//     line starts with the sd-daemon priority prefix (<3> error, <4>
//     warning, <6> info, <7> debug) so that "journalctl -p warning" finds
//     the agent's warnings, and carries no timestamp of its own (the
//     journal has one). Elsewhere lines keep slog's usual form.
//   - One value per key: a child logger's With("component", "dps")
//     replaces its parent's component instead of adding a second one, so a
//     JSON record never repeats a key.
//   - The level is a *slog.LevelVar: it can change while the agent runs
//     (systemctl reload devid-agent sends SIGHUP; docs/agent.md).
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Options says how to log.
type Options struct {
	// Format is "text" or "json".
	Format string
	// Level is read on every record; nil means info.
	Level slog.Leveler
	// W receives the lines (os.Stderr).
	W io.Writer
	// Journal adds the sd-daemon priority prefix and drops the timestamp.
	Journal bool
}

// New returns a logger for o.
func New(o Options) *slog.Logger {
	if o.Level == nil {
		o.Level = slog.LevelInfo
	}
	if o.W == nil {
		o.W = os.Stderr
	}
	return slog.New(&dedup{next: newBase(o)})
}

// ParseLevel reads a config log_level (debug, info, warn, error).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q is not debug, info, warn or error", s)
	}
	return l, nil
}

// JournalStream reports whether f is the stream systemd connected to the
// journal: JOURNAL_STREAM holds its "device:inode" (systemd.exec(5)).
func JournalStream(f *os.File) bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" || f == nil {
		return false
	}
	dev, ino, ok := strings.Cut(v, ":")
	if !ok {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(uint64(st.Ino), 10) == ino
}

// Priority is the sd-daemon prefix for a level.
func Priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}

// newBase is the formatting handler. For the journal it is one slog
// handler per priority, each writing through a prefixWriter (slog handlers
// write each record with a single Write).
func newBase(o Options) slog.Handler {
	mk := func(w io.Writer) slog.Handler {
		ho := &slog.HandlerOptions{Level: o.Level}
		if o.Journal {
			ho.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}
		}
		if o.Format == "json" {
			return slog.NewJSONHandler(w, ho)
		}
		return slog.NewTextHandler(w, ho)
	}
	if !o.Journal {
		return mk(o.W)
	}
	j := &journal{}
	for i, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		j.byPrio[i] = mk(&prefixWriter{prefix: []byte(Priority(l)), w: o.W})
	}
	return j
}

type prefixWriter struct {
	prefix []byte
	w      io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	line := make([]byte, 0, len(p.prefix)+len(b))
	line = append(append(line, p.prefix...), b...)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}

// journal sends each record to the handler of its priority.
type journal struct{ byPrio [4]slog.Handler }

func (j *journal) pick(l slog.Level) slog.Handler {
	switch {
	case l >= slog.LevelError:
		return j.byPrio[3]
	case l >= slog.LevelWarn:
		return j.byPrio[2]
	case l >= slog.LevelInfo:
		return j.byPrio[1]
	}
	return j.byPrio[0]
}

func (j *journal) Enabled(ctx context.Context, l slog.Level) bool {
	return j.pick(l).Enabled(ctx, l)
}
func (j *journal) Handle(ctx context.Context, r slog.Record) error {
	return j.pick(r.Level).Handle(ctx, r)
}
func (j *journal) WithAttrs(as []slog.Attr) slog.Handler {
	n := &journal{}
	for i, h := range j.byPrio {
		n.byPrio[i] = h.WithAttrs(as)
	}
	return n
}
func (j *journal) WithGroup(g string) slog.Handler {
	n := &journal{}
	for i, h := range j.byPrio {
		n.byPrio[i] = h.WithGroup(g)
	}
	return n
}

// dedup keeps the attributes of With itself, one value per key (the
// latest), and hands them to next with each record, where the record's own
// attributes override them too.
type dedup struct {
	next  slog.Handler
	attrs []slog.Attr
}

func (d *dedup) Enabled(ctx context.Context, l slog.Level) bool { return d.next.Enabled(ctx, l) }

func (d *dedup) WithAttrs(as []slog.Attr) slog.Handler {
	return &dedup{next: d.next, attrs: merge(d.attrs, as)}
}

// WithGroup hands the attributes gathered so far to next: keys after a
// group are qualified by it and cannot clash with those before.
func (d *dedup) WithGroup(g string) slog.Handler {
	if g == "" {
		return d
	}
	return &dedup{next: d.next.WithAttrs(d.attrs).WithGroup(g)}
}

func (d *dedup) Handle(ctx context.Context, r slog.Record) error {
	var own []slog.Attr
	r.Attrs(func(a slog.Attr) bool { own = append(own, a); return true })
	all := merge(d.attrs, own)
	n := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	n.AddAttrs(all...)
	return d.next.Handle(ctx, n)
}

// merge returns base with add applied: a key already present takes the
// new value in its old place; new keys go at the end.
func merge(base, add []slog.Attr) []slog.Attr {
	out := slices.Clone(base)
	for _, a := range add {
		if a.Equal(slog.Attr{}) {
			continue
		}
		if i := slices.IndexFunc(out, func(b slog.Attr) bool { return b.Key == a.Key }); i >= 0 {
			out[i] = a
		} else {
			out = append(out, a)
		}
	}
	return out
}
