package conformance

import (
	"os"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

// extraArgs lets the whole suite run against the simulator's other
// documented switches, e.g.
//
//	CONFORMANCE_SIM_ARGS="--dps-id-mismatch register --disabled-enrollment 401" go test ./simulator/conformance
//
// The tests accept every variant docs/simulator.md lists under Switches, so
// they must stay green.
func extraArgs() []simtest.Option {
	if a := strings.Fields(os.Getenv("CONFORMANCE_SIM_ARGS")); len(a) > 0 {
		return []simtest.Option{simtest.WithArgs(a...)}
	}
	return nil
}

// startSim runs the real devid-sim binary (simtest builds it, starts it on a
// temporary state directory and stops it at cleanup) and returns the view an
// outside client has of it. simtest's fast timing (retry-after 1, no extra
// assigning poll) keeps the SDK flow short; nothing else differs.
func startSim(t *testing.T, opts ...simtest.Option) *target {
	t.Helper()
	s := simtest.Start(t, append(extraArgs(), opts...)...)
	return newTarget(t, s.Ready)
}
