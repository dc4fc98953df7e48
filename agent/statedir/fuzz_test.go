package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadRecords feeds arbitrary bytes to the state and assignment
// records: loading never panics, and either returns a record of the
// current schema or an error (corrupt: ErrNotExist with the bytes kept
// aside; newer schema: ErrNewerSchema with the file left alone).
func FuzzLoadRecords(f *testing.F) {
	for _, s := range []string{
		`{"schema":1,"state":"connected","since":"2026-11-29T12:00:00Z"}`,
		`{"schema":1,"hub":"h.azure-devices.net","device_id":"d","assigned_at":"2026-11-29T12:00:00Z"}`,
		`{"schema":99}`, `{"schema":0}`, `{"schema":-1}`, `{"state":`, `null`, `[]`, `"x"`, ``, "\x00\xff",
		`{"schema":1,"since":"not a time"}`, `{"schema":1,"hub_failures":1e400}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Open(filepath.Join(t.TempDir(), "s"))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{StateFile, AssignmentFile} {
			if err := os.WriteFile(d.File(name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		check := func(what string, schema int, err error) {
			switch {
			case err == nil:
				if schema != StateSchema && what == "state" || schema != AssignmentSchema && what == "assignment" {
					t.Fatalf("%s loaded with schema %d", what, schema)
				}
			case errors.Is(err, ErrNotExist), errors.Is(err, ErrNewerSchema):
			default:
				t.Fatalf("%s: unexpected error %v", what, err)
			}
		}
		st, err := d.LoadState()
		var sch int
		if st != nil {
			sch = st.Schema
		}
		check("state", sch, err)
		as, err := d.LoadAssignment()
		sch = 0
		if as != nil {
			sch = as.Schema
		}
		check("assignment", sch, err)
	})
}
