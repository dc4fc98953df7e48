// Package agent is the devid daemon: the state machine that carries a
// device from factory to field, its config, state directory, local API
// and wiring of hal, enroll and dps.
package agent
