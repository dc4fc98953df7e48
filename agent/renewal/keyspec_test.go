package renewal

import (
	"path/filepath"
	"testing"

	_ "devid/enroll/keys/tpmkey" // the "tpm" backend, as the agent binary has it
)

// TestOperationalKeySpecCurve: renewal.key_curve reaches the operational
// key spec (and so the staged key the rotator makes), for both backends.
func TestOperationalKeySpecCurve(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	opFile := "file:" + filepath.Join(state, OperationalKeyFile)
	for _, tc := range []struct{ device, curve, want string }{
		{"file:", "P-256", opFile},
		{"file:", "", opFile},
		{"file:", "P-384", opFile + ",curve=p384"},
		{"tpm:/dev/tpmrm0", "P-384", "tpm:/dev/tpmrm0,blob=" + filepath.Join(state, OperationalBlobFile) + ",curve=p384"},
	} {
		got, err := operationalKeySpec(tc.device, state, tc.curve)
		if err != nil || got != tc.want {
			t.Errorf("operationalKeySpec(%q, %q) = %q, %v; want %q", tc.device, tc.curve, got, err, tc.want)
		}
	}
	if _, err := operationalKeySpec("file:", state, "P-521"); err == nil {
		t.Error("P-521 accepted")
	}
}
