package simulator_test

import (
	"io"
	"testing"

	"devid/simulator"
	"devid/simulator/simtest"
)

// startSim starts a simulator inside the test process, through the same
// `devid-sim serve` flags and harness as the subprocess the end-to-end
// tests (conformance, cmd/devid-sim, dps, agent) run.
func startSim(t testing.TB, opts ...simtest.Option) *simtest.Sim {
	t.Helper()
	return simtest.Start(t, append([]simtest.Option{simtest.InProcess(startInProcess)}, opts...)...)
}

func startInProcess(args []string, log io.Writer) (simtest.Server, error) {
	s, err := simulator.StartArgs(args, log)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return s, nil
}
