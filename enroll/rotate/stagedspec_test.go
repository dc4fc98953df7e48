package rotate

import (
	"testing"
)

func TestDefaultStagedSpecKeepsCurve(t *testing.T) {
	t.Parallel()
	got, err := DefaultStagedSpec("file", []string{"/s/op.key"})("file:/s/op.key,curve=p384")
	if want := "file:/s/op.key" + StagedSuffix + ",curve=p384"; err != nil || got != want {
		t.Fatalf("staged spec %q, %v; want %q", got, err, want)
	}
	got, err = DefaultStagedSpec("file", []string{"/s/op.key"})("file:/s/op.key")
	if want := "file:/s/op.key" + StagedSuffix; err != nil || got != want {
		t.Fatalf("staged spec %q, %v; want %q", got, err, want)
	}
}
