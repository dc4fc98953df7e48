package renewal

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/credential"
	"devid/enroll/rotate"
)

// TestProbeRejectsOnlyRefusals: with paths dps and hub, a hub
// that refuses the candidate rejects it (rotate.ErrProbe follows), while
// a hub that cannot be reached says rotate.ErrNotReached, so the
// registration's certificate is kept. Path est keeps rejecting on any
// failure: there the old certificate is not stranded by the issuance.
func TestProbeRejectsOnlyRefusals(t *testing.T) {
	t.Parallel()
	refused := &dps.ConnackError{Host: "hub", Code: 5}
	badKey := &dps.ConfigError{Field: "Certificate"}
	down := &dps.ClosedError{Host: "hub", Phase: "connect", Err: errors.New("EOF")}
	for _, tc := range []struct {
		path        string
		connect     error
		notReached  bool
		wantSuccess bool
	}{
		{"dps", nil, false, true},
		{"dps", refused, false, false},
		{"dps", badKey, false, false},
		{"dps", down, true, false},
		{"dps", context.DeadlineExceeded, true, false},
		{"hub", down, true, false},
		{"hub", refused, false, false},
		{"est", down, false, false},
	} {
		cfg := config.Default()
		cfg.StateDir = t.TempDir()
		cfg.Key.Backend = "file:" + filepath.Join(cfg.StateDir, "device.key")
		cfg.Renewal.Path = tc.path
		cfg.Renewal.ESTURL = "https://est.example/.well-known/est"
		dir, err := statedir.Open(cfg.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		as := &statedir.Assignment{Hub: "hub", DeviceID: "dev-1"}
		r, err := New(Deps{Config: cfg, Dir: dir,
			Register: func(context.Context, *credential.Credential) (*statedir.Assignment, error) { return as, nil },
			Connect: func(context.Context, *credential.Credential, *statedir.Assignment) error {
				return tc.connect
			}})
		if err != nil {
			t.Fatal(err)
		}
		r.assigned = as
		err = r.probe(context.Background(), credential.Credential{})
		name := fmt.Sprintf("path %s, connect %v", tc.path, tc.connect)
		switch {
		case tc.wantSuccess && err != nil:
			t.Errorf("%s: %v, want success", name, err)
		case !tc.wantSuccess && err == nil:
			t.Errorf("%s: success, want an error", name)
		case errors.Is(err, rotate.ErrNotReached) != tc.notReached:
			t.Errorf("%s: %v; ErrNotReached %v, want %v", name, err, !tc.notReached, tc.notReached)
		}
	}
}
