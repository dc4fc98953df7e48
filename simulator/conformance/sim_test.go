package conformance

import (
	"testing"

	"devid/simulator/simtest"
)

// startSim runs the real devid-sim binary (simtest builds it, starts it on a
// temporary state directory and stops it at cleanup) and returns the view an
// outside client has of it. simtest's fast timing (retry-after 1, no extra
// assigning poll) keeps the SDK flow short; nothing else differs.
func startSim(t *testing.T, opts ...simtest.Option) *target {
	t.Helper()
	s := simtest.Start(t, opts...)
	return newTarget(t, s.Ready)
}
