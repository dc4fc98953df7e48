package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOpenTightensMode(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("mode %o, want 0700", st.Mode().Perm())
	}
}

func TestAssignmentRoundTrip(t *testing.T) {
	t.Parallel()
	d, err := Open(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadAssignment(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("empty dir: %v", err)
	}
	at := time.Date(2026, 11, 29, 1, 2, 3, 0, time.UTC)
	if err := d.SaveAssignment(&Assignment{Hub: "h.azure-devices.net", DeviceID: "dev1", AssignedAt: at}); err != nil {
		t.Fatal(err)
	}
	a, err := d.LoadAssignment()
	if err != nil || a.Hub != "h.azure-devices.net" || !a.AssignedAt.Equal(at) || a.Schema != AssignmentSchema {
		t.Fatalf("got %+v, %v", a, err)
	}
	st, _ := os.Stat(d.File(AssignmentFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o", st.Mode().Perm())
	}
	b, _ := os.ReadFile(d.File(AssignmentFile))
	if !strings.Contains(string(b), `"schema": 1`) {
		t.Fatalf("no schema in %s", b)
	}
	if err := d.ClearAssignment(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadAssignment(); !errors.Is(err, ErrNotExist) {
		t.Fatalf("after clear: %v", err)
	}
	if _, err := os.Stat(d.File(AssignmentFile + ".prev")); err != nil {
		t.Fatalf("previous assignment not kept: %v", err)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(d.Path)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

func TestCorruptAndNewerRecords(t *testing.T) {
	t.Parallel()
	d, _ := Open(filepath.Join(t.TempDir(), "s"))
	os.WriteFile(d.File(StateFile), []byte(`{"state": "conn`), 0o600)
	if _, err := d.LoadState(); !errors.Is(err, ErrNotExist) || !strings.Contains(err.Error(), "set aside as") {
		t.Fatalf("corrupt: %v", err)
	}
	ents, _ := os.ReadDir(d.Path)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), StateFile+".corrupt-") {
		t.Fatalf("corrupt file not kept aside: %v", ents)
	}
	os.WriteFile(d.File(StateFile), []byte(`{"schema": 99, "state": "connected"}`), 0o600)
	if _, err := d.LoadState(); !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("newer: %v", err)
	}
	if _, err := os.Stat(d.File(StateFile)); err != nil {
		t.Fatal("a newer record must be left alone")
	}
}

// TestNewerRecordNeverOverwritten: a record of a newer schema is refused
// at load, refused at save, and its bytes stay as they were.
func TestNewerRecordNeverOverwritten(t *testing.T) {
	t.Parallel()
	d, _ := Open(filepath.Join(t.TempDir(), "s"))
	newer := []byte(`{"schema": 2, "state": "connected", "from_the_future": true}`)
	for _, name := range []string{StateFile, AssignmentFile} {
		os.WriteFile(d.File(name), newer, 0o600)
	}
	if err := d.CheckSchemas(); !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), d.File(StateFile)) || !strings.Contains(err.Error(), "schema 2") {
		t.Errorf("CheckSchemas: %v", err)
	}
	if err := d.SaveState(&State{Name: "offline"}); !errors.Is(err, ErrNewerSchema) {
		t.Errorf("SaveState over a newer record: %v", err)
	}
	if err := d.SaveAssignment(&Assignment{Hub: "h"}); !errors.Is(err, ErrNewerSchema) {
		t.Errorf("SaveAssignment over a newer record: %v", err)
	}
	for _, name := range []string{StateFile, AssignmentFile} {
		if b, _ := os.ReadFile(d.File(name)); string(b) != string(newer) {
			t.Errorf("%s overwritten: %s", name, b)
		}
	}
}

// TestCorruptRecordReported: a damaged record is set aside under a name
// that says so, and the error names the path, the cause and the new name.
func TestCorruptRecordReported(t *testing.T) {
	t.Parallel()
	d, _ := Open(filepath.Join(t.TempDir(), "s"))
	os.WriteFile(d.File(AssignmentFile), []byte(`{"schema":1,"hub":`), 0o600)
	_, err := d.LoadAssignment()
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrNotExist) || ce.Path != d.File(AssignmentFile) || ce.Cause == nil {
		t.Fatalf("got %v", err)
	}
	if got, err := SetAsideFiles(d.Path); err != nil || len(got) != 1 || got[0] != ce.Aside || !strings.HasPrefix(filepath.Base(got[0]), AssignmentFile+CorruptSuffix) {
		t.Fatalf("set aside %v, error says %q", got, ce.Aside)
	}
}

// TestWriteStateSaysWhetherItWrote: a save of the bytes already on disk
// writes nothing and says so; a changed one writes.
func TestWriteStateSaysWhetherItWrote(t *testing.T) {
	t.Parallel()
	d, err := Open(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		name string
		want bool
	}{{"connected", true}, {"connected", false}, {"backoff", true}} {
		written, err := d.WriteState(&State{Name: c.name})
		if err != nil || written != c.want {
			t.Errorf("save %d (%s): written %v, %v; want %v", i, c.name, written, err, c.want)
		}
	}
	as := &Assignment{Hub: "h", DeviceID: "dev1"}
	for i, want := range []bool{true, false} {
		if written, err := d.WriteAssignment(as); err != nil || written != want {
			t.Errorf("assignment save %d: written %v, %v; want %v", i, written, err, want)
		}
	}
}
