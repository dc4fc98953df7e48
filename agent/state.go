package agent

import (
	"fmt"
	"time"
)

// State is a state of the agent's state machine. States are persisted
// and reported by name (String), never by number.
type State int

// The states. Order is irrelevant: only names are persisted.
const (
	// Unenrolled: no key and certificate yet; waiting for factory mode.
	Unenrolled State = iota
	// Factory: serving the factory bus, waiting for the jig.
	Factory
	// Enrolled: identity present; waiting for a sane clock before any TLS.
	Enrolled
	// Provisioning: registering with DPS (no cached assignment).
	Provisioning
	// Connecting: connecting to the (cached or just assigned) hub.
	Connecting
	// Connected: connected to the hub; telemetry flows.
	Connected
	// Backoff: waiting before the next DPS or hub attempt.
	Backoff
	// Reprovisioning: going back to DPS after a hub auth refusal, too many
	// hub failures, or a reprovision request.
	Reprovisioning
	// Revoked: DPS says disabled/failed, or the identity keeps being
	// refused. Reported, then retried slowly with a cap.
	Revoked
	// Error: something only an operator can fix (bad identity, missing
	// id_scope). Reported, then re-checked slowly.
	Error
	numStates
)

var stateNames = [numStates]string{
	Unenrolled:     "unenrolled",
	Factory:        "factory",
	Enrolled:       "enrolled",
	Provisioning:   "provisioning",
	Connecting:     "connecting",
	Connected:      "connected",
	Backoff:        "backoff",
	Reprovisioning: "reprovisioning",
	Revoked:        "revoked",
	Error:          "error",
}

func (s State) String() string {
	if s >= 0 && s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// ParseState maps a persisted name back to a State.
func ParseState(name string) (State, error) {
	for i, n := range stateNames {
		if n == name {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown state %q", name)
}

// MarshalText persists the name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// EventKind says what happened.
type EventKind int

// Events posted to the state goroutine.
const (
	EvBoot          EventKind = iota // start; Identity says whether key+cert exist
	EvFactoryButton                  // the factory button was held
	EvFactoryDone                    // factory mode ended; Identity says whether it produced one
	EvIdentity                       // an identity appeared (installed by the jig)
	EvClockOK                        // clock is sane; Cached says whether an assignment is cached
	EvAssigned                       // DPS assigned a hub
	EvDPSRefused                     // DPS said disabled or failed (terminal for this enrollment)
	EvDPSError                       // DPS attempt failed, retryable
	EvHubConnected                   // hub CONNACK accepted
	EvHubFailed                      // hub connect failed or the connection dropped
	EvClockBad                       // a TLS failure caused by the local clock
	EvReprovision                    // reprovision requested (direct method, local API)
	EvTimer                          // the current state's timer fired
	EvFatal                          // something an operator must fix
	EvCredential                     // the credential on disk changed (renewal committed)
	evPing                           // liveness probe (watchdog); never reaches next
	evLKG                            // refresh the last-known-good time while connected; never reaches next
)

var eventNames = map[EventKind]string{
	EvBoot: "boot", EvFactoryButton: "factory_button", EvFactoryDone: "factory_done", EvIdentity: "identity",
	EvClockOK: "clock_ok", EvAssigned: "assigned", EvDPSRefused: "dps_refused", EvDPSError: "dps_error",
	EvHubConnected: "hub_connected", EvHubFailed: "hub_failed", EvClockBad: "clock_bad",
	EvReprovision: "reprovision", EvTimer: "timer", EvFatal: "fatal", EvCredential: "credential_changed",
}

func (k EventKind) String() string {
	if n, ok := eventNames[k]; ok {
		return n
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one input to the state machine. Only the fields that matter
// to its Kind are set.
type Event struct {
	Kind EventKind
	// Identity: key and certificate are present and match.
	Identity bool
	// FactoryPort: a factory serial port is configured.
	FactoryPort bool
	// Revoked (boot): the agent was revoked with a retry still pending.
	Revoked bool
	// Cached: a usable DPS assignment is cached.
	Cached bool
	// WrongFloor (EvClockOK): the kernel reports NTP synchronisation at a
	// clock below the saved last-known-good time, which is to be lowered.
	WrongFloor bool
	// AuthRefused: the hub refused the credential (CONNACK 5, 401).
	AuthRefused bool
	// Err is the cause, for logs and status.
	Err error
	// epoch ties timer and worker events to the state entry that started
	// them; stale ones are dropped.
	epoch uint64
	// payload carries worker results (hub connection, assignment).
	payload any
}

// counters is the machine's memory that next() reads. The state
// goroutine updates it in enter; next never changes it.
type counters struct {
	hubFailures    int // consecutive hub failures since the last connect
	maxHubFailures int
	// failingFor is how long the hub has been failing (since the first
	// of the consecutive failures); minFailing is hub.reprovision_after.
	failingFor, minFailing time.Duration
	// reprovisions counts DPS round trips since the last good hub
	// connection; a hub that refuses every fresh assignment must not
	// make the agent loop through DPS (docs/field-problems.md, row 11).
	reprovisions    int
	maxReprovisions int
	cached          bool // an assignment is cached
}

// next is the pure transition function: the state to enter after ev in
// cur, given the counters. Returning cur means "stay, no re-entry".
func next(cur State, ev Event, c counters) State {
	// Transitions valid from every state.
	switch ev.Kind {
	case EvFactoryButton:
		return Factory
	case EvFatal:
		return Error
	}
	if ev.Kind == EvCredential {
		switch cur {
		case Connecting, Connected, Backoff, Revoked, Reprovisioning:
			// Reload the identity, then reconnect with it: a new
			// credential is the way out of a refused one.
			return Enrolled
		}
		return cur
	}
	switch cur {
	case Unenrolled:
		switch ev.Kind {
		case EvBoot:
			if ev.Identity && ev.Revoked {
				// Still inside the slow retry: no DPS round trip at boot.
				return Revoked
			}
			if ev.Identity {
				return Enrolled
			}
			if ev.FactoryPort {
				return Factory
			}
		case EvIdentity:
			return Enrolled
		case EvTimer: // periodic re-check for an identity installed by other means
			if ev.Identity {
				return Enrolled
			}
		}
	case Factory:
		switch ev.Kind {
		case EvFactoryDone, EvIdentity:
			if ev.Identity {
				return Enrolled
			}
			if ev.Kind == EvFactoryDone {
				return Unenrolled
			}
		}
	case Enrolled:
		switch ev.Kind {
		case EvClockOK:
			if ev.Cached {
				return Connecting
			}
			return Provisioning
		}
	case Provisioning, Reprovisioning:
		switch ev.Kind {
		case EvAssigned:
			return Connecting
		case EvDPSRefused:
			return Revoked
		case EvDPSError:
			return Backoff
		case EvClockBad:
			return Enrolled
		}
	case Connecting:
		switch ev.Kind {
		case EvHubConnected:
			return Connected
		case EvClockBad:
			return Enrolled
		case EvHubFailed:
			if ev.AuthRefused || (c.hubFailures+1 >= c.maxHubFailures && c.failingFor >= c.minFailing) {
				if c.reprovisions >= c.maxReprovisions {
					return Revoked
				}
				return Reprovisioning
			}
			return Backoff
		case EvReprovision:
			return Reprovisioning
		}
	case Connected:
		switch ev.Kind {
		case EvHubFailed:
			if ev.AuthRefused {
				return Reprovisioning
			}
			return Backoff
		case EvReprovision:
			return Reprovisioning
		case EvClockBad:
			return Enrolled
		}
	case Backoff:
		switch ev.Kind {
		case EvTimer:
			if c.cached {
				return Connecting
			}
			return Provisioning
		case EvReprovision:
			return Reprovisioning
		}
	case Revoked:
		switch ev.Kind {
		case EvTimer:
			// Ask DPS again: a re-enabled enrollment brings the device back.
			return Reprovisioning
		case EvReprovision:
			return Reprovisioning
		}
	case Error:
		switch ev.Kind {
		case EvTimer:
			if ev.Identity {
				return Enrolled
			}
			return Unenrolled
		}
	}
	return cur
}
