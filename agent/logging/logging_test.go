package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestJSONHasNoDuplicateKeys: a child's component replaces its parent's,
// and a record's own attribute replaces a With one.
func TestJSONHasNoDuplicateKeys(t *testing.T) {
	var buf bytes.Buffer
	log := New(Options{Format: "json", W: &buf})
	log = log.With("component", "agent", "device_id", "d1").With("component", "dps")
	log.Info("registered", "device_id", "d2", "hub", "h")
	line := buf.String()
	if n := strings.Count(line, `"component"`); n != 1 {
		t.Fatalf("component appears %d times: %s", n, line)
	}
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["component"] != "dps" || rec["device_id"] != "d2" || rec["hub"] != "h" {
		t.Errorf("record %v: want component dps, device_id d2, hub h", rec)
	}
}

func TestGroupsKeepTheirKeys(t *testing.T) {
	var buf bytes.Buffer
	New(Options{Format: "text", W: &buf}).With("component", "a").WithGroup("tls").With("component", "b").Info("m")
	if !strings.Contains(buf.String(), "component=a tls.component=b") {
		t.Errorf("got %q", buf.String())
	}
}

// TestJournalPrefix: under the journal each line starts with its
// priority and carries no time; elsewhere it keeps the time.
func TestJournalPrefix(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		lv := new(slog.LevelVar)
		lv.Set(slog.LevelDebug)
		log := New(Options{Format: format, W: &buf, Journal: true, Level: lv})
		log.Debug("d")
		log.Info("i")
		log.Warn("w", "k", "v")
		log.Error("e")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		want := []string{"<7>", "<6>", "<4>", "<3>"}
		if len(lines) != 4 {
			t.Fatalf("%s: %d lines: %q", format, len(lines), buf.String())
		}
		for i, l := range lines {
			if !strings.HasPrefix(l, want[i]) || strings.Count(l, "<") != 1 {
				t.Errorf("%s line %d = %q, want prefix %s once", format, i, l, want[i])
			}
			if strings.Contains(l, "time") {
				t.Errorf("%s line %d has a timestamp: %q", format, i, l)
			}
		}
	}
	var buf bytes.Buffer
	New(Options{Format: "text", W: &buf}).Warn("w")
	if !strings.HasPrefix(buf.String(), "time=") {
		t.Errorf("outside the journal: %q, want slog's usual line with time", buf.String())
	}
}

func TestLevelChangesAtRunTime(t *testing.T) {
	var buf bytes.Buffer
	lv := new(slog.LevelVar)
	log := New(Options{W: &buf, Level: lv}).With("component", "x")
	log.Debug("hidden")
	lv.Set(slog.LevelDebug)
	log.Debug("shown")
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), "shown") {
		t.Errorf("got %q", buf.String())
	}
}

func TestJournalStream(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Setenv("JOURNAL_STREAM", "")
	if JournalStream(f) {
		t.Error("no JOURNAL_STREAM: want false")
	}
	s := statOf(t, f)
	dev, ino := s[0], s[1]
	t.Setenv("JOURNAL_STREAM", strings.Join([]string{itoa(dev), itoa(ino)}, ":"))
	if !JournalStream(f) {
		t.Error("JOURNAL_STREAM names this file: want true")
	}
	t.Setenv("JOURNAL_STREAM", itoa(dev)+":1")
	if JournalStream(f) {
		t.Error("JOURNAL_STREAM names another inode (stderr redirected): want false")
	}
}

func TestParseLevel(t *testing.T) {
	if l, err := ParseLevel("warn"); err != nil || l != slog.LevelWarn {
		t.Errorf("warn: %v %v", l, err)
	}
	if _, err := ParseLevel("loud"); err == nil {
		t.Error("loud: accepted")
	}
}
