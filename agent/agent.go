package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"devid/agent/config"
	"devid/agent/queue"
	"devid/agent/statedir"
	"devid/hal/clock"
)

// Options are the agent's dependencies. Config, Identity and Cloud are
// required; the rest have safe defaults.
type Options struct {
	Config  *config.Config
	Version string
	Logger  *slog.Logger
	// Clock is the time source of every timestamp and wait. Nil:
	// clock.System.
	Clock    clock.Clock
	Identity IdentitySource
	Cloud    Cloud
	// Factory serves the factory bus until ctx ends. Nil: factory mode
	// only waits for an identity to appear.
	Factory func(ctx context.Context) error
	// Indicator shows the state (status LED). Nil: none.
	Indicator func(State)
	// Button delivers factory-button presses (already debounced and held
	// long enough). Nil: none.
	Button <-chan struct{}
	// OnState is called after every transition (sd_notify STATUS=).
	OnState func(Status)
	// ClockSynced reports whether the kernel says the clock is NTP
	// synchronised (used when clock.require_sync is set).
	ClockSynced func() bool
	// ConfigDegraded, when set, is reported as Status.Config (the agent
	// runs with the last-known-good config; see devid-agent run).
	ConfigDegraded string
}

// Status is what `devid-agent status` and the local API show.
type Status struct {
	State       string    `json:"state"`
	Since       time.Time `json:"since"`
	DeviceID    string    `json:"device_id,omitempty"`
	Hub         string    `json:"hub,omitempty"`
	KeyBackend  string    `json:"key_backend,omitempty"`
	CertExpiry  time.Time `json:"cert_expiry,omitzero"`
	CertSerial  string    `json:"cert_serial,omitempty"`
	Queue       QueueInfo `json:"queue"`
	HubFailures int       `json:"hub_failures"`
	LastError   string    `json:"last_error,omitempty"`
	// ClockWait is set while the agent waits for a sane clock.
	ClockWait     *ClockWait                `json:"clock_wait,omitempty"`
	NextRetry     time.Time                 `json:"next_retry,omitzero"`
	LastProvision *statedir.ProvisionResult `json:"last_provision,omitempty"`
	Version       string                    `json:"version"`
	Uptime        string                    `json:"uptime"`
	StartedAt     time.Time                 `json:"started_at"`
	Sent          uint64                    `json:"sent"`
	// Config is set when the config file was invalid and the agent runs
	// with its last-known-good copy: what was wrong, and from when.
	Config string `json:"config,omitempty"`
	// Extra holds extension status by name (e.g. "renewal").
	Extra map[string]any `json:"extra,omitempty"`
}

// QueueInfo is the telemetry queue part of Status.
type QueueInfo struct {
	Depth   uint64 `json:"depth"`
	Bytes   int64  `json:"bytes"`
	Dropped uint64 `json:"dropped"`
	// Corrupt: damaged records skipped (docs/state-dir.md).
	Corrupt uint64 `json:"corrupt"`
	// SetAside: messages the hub refused for good, in queue/setaside.log.
	SetAside uint64 `json:"set_aside"`
	// CursorSetAside: where a damaged ack cursor was moved.
	CursorSetAside string `json:"cursor_set_aside,omitempty"`
}

// ClockWait describes a wait for a sane clock.
type ClockWait struct {
	Since  time.Time `json:"since"`
	Floor  time.Time `json:"floor"`
	Reason string    `json:"reason"`
	// Exceeded: clock.max_wait passed; the agent proceeds but treats
	// TLS time errors as clock problems, never as identity problems.
	Exceeded bool `json:"exceeded,omitempty"`
}

// Agent is the daemon. One goroutine (Run) owns the state; everything
// else talks to it through events.
type Agent struct {
	opt   Options
	cfg   *config.Config
	log   *slog.Logger
	clock clock.Clock
	dir   *statedir.Dir
	queue *queue.Queue
	// sendTries follows the oldest failing telemetry message (sender.go).
	sendTries sendTries

	events  chan Event
	stopped chan struct{} // closed when Run returns

	// Owned by the Run goroutine.
	state       State
	epoch       uint64
	stateCtx    context.Context
	stateCancel context.CancelFunc
	cnt         counters
	backoffN    int
	revokedN    int
	persisted   statedir.State
	assignment  *statedir.Assignment
	id          *Identity
	clockWait   *ClockWait
	started     time.Time
	// firstHubFailure is when the current run of hub failures began.
	firstHubFailure time.Time

	mu     sync.Mutex // guards status, hub, local
	status Status
	hub    HubConn
	sent   uint64
	local  LocalSink

	// Hooks for extensions (credential renewal, agent/rotation.go). Set
	// them before Run; they are read-only afterwards.
	extraMethods map[string]func(ctx context.Context, payload []byte) (int, []byte)
	desiredHooks []func(patch []byte)
	statusExtra  map[string]func() any
	background   []func(ctx context.Context)
	// transitionHooks run at the end of every enter, on the state
	// goroutine: they must not block (post work to their own goroutine).
	transitionHooks []func(from, to State, ev Event)
}

// New checks the options and opens the state directory and queue.
func New(opt Options) (*Agent, error) {
	if opt.Config == nil || opt.Identity == nil || opt.Cloud == nil {
		return nil, errors.New("agent: Config, Identity and Cloud are required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = clock.System
	}
	if opt.Version == "" {
		opt.Version = "dev"
	}
	cfg := opt.Config
	dir, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	q, err := queue.Open(dir.File(statedir.QueueDir), queue.Options{
		MaxBytes:      cfg.Queue.MaxBytes,
		SegmentBytes:  cfg.Queue.SegmentBytes,
		Fsync:         cfg.Queue.Fsync,
		FsyncInterval: cfg.Queue.FsyncInterval.D(),
		Log:           opt.Logger.With("component", "queue"),
	})
	if err != nil {
		return nil, err
	}
	a := &Agent{
		opt:     opt,
		cfg:     cfg,
		log:     opt.Logger.With("component", "agent"),
		clock:   opt.Clock,
		dir:     dir,
		queue:   q,
		events:  make(chan Event, 64),
		stopped: make(chan struct{}),
		cnt: counters{
			maxHubFailures:  cfg.Hub.MaxFailures,
			minFailing:      cfg.Hub.ReprovisionAfter.D(),
			maxReprovisions: 3,
		},
		extraMethods: map[string]func(context.Context, []byte) (int, []byte){},
		statusExtra:  map[string]func() any{},
	}
	a.status.Config = opt.ConfigDegraded
	if err := a.initExtensions(); err != nil {
		q.Close()
		return nil, err
	}
	return a, nil
}

// post hands an event to the state goroutine. It never blocks the
// caller for long: the channel is buffered and the loop drains it.
func (a *Agent) post(ev Event) {
	select {
	case a.events <- ev:
	case <-a.stopped:
		// Run has returned: nobody will read it.
	}
}

// postState posts an event tied to the current state entry (epoch), so it
// is dropped if the state has changed meanwhile.
func (a *Agent) postState(epoch uint64, ev Event) {
	ev.epoch = epoch
	a.post(ev)
}

// Run runs the state machine until ctx ends. It returns nil on a clean
// stop; it never returns because of a network error.
func (a *Agent) Run(ctx context.Context) error {
	defer close(a.stopped)
	defer a.queue.Close()
	a.started = a.clock.Now()
	if st, err := a.dir.LoadState(); err == nil {
		a.persisted = *st
		a.cnt.hubFailures = st.HubFailures
		if st.HubFailures > 0 {
			// The failures went on before the restart; count the time
			// from now, conservatively.
			a.firstHubFailure = a.clock.Now()
		}
	} else if !errors.Is(err, statedir.ErrNotExist) {
		a.log.Warn("state record unreadable; starting fresh (nothing deleted)", "err", err)
	}
	if as, err := a.dir.LoadAssignment(); err == nil {
		a.assignment = as
	} else if !errors.Is(err, statedir.ErrNotExist) {
		a.log.Warn("cached assignment unreadable; will register with DPS", "err", err)
	}
	a.log.Info("starting", "version", a.opt.Version, "state_dir", a.cfg.StateDir,
		"previous_state", a.persisted.Name, "cached_hub", a.hubName())

	for _, bg := range a.background {
		go bg(ctx)
	}
	_, idErr := a.probeIdentity()
	revoked := a.persisted.Name == Revoked.String() && a.persisted.RetryAt.After(a.clock.Now())
	a.state = Unenrolled
	a.enter(Unenrolled, Event{Kind: EvBoot}, true)
	a.handle(Event{Kind: EvBoot, Identity: idErr == nil, Revoked: revoked,
		FactoryPort: a.cfg.Factory.Port != "" && a.opt.Factory != nil})

	for {
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-a.opt.Button:
			a.handle(Event{Kind: EvFactoryButton})
		case ev := <-a.events:
			a.handle(ev)
		}
	}
}

// closeHub closes the hub connection, if there is one, and forgets it.
func (a *Agent) closeHub() {
	a.mu.Lock()
	hub := a.hub
	a.hub = nil
	a.mu.Unlock()
	if hub != nil {
		hub.Close()
	}
}

func (a *Agent) shutdown() {
	if a.stateCancel != nil {
		a.stateCancel()
	}
	a.closeHub()
	a.queue.Sync()
	a.persist()
	a.id.Close()
	a.log.Info("stopped", "state", a.state.String())
}

func (a *Agent) hubName() string {
	if a.assignment == nil {
		return ""
	}
	return a.assignment.Hub
}

// handle runs one event through next and enter. Only Run calls it.
func (a *Agent) handle(ev Event) {
	if ev.Kind == evPing {
		close(ev.payload.(chan struct{}))
		return
	}
	if ev.Kind == evLKG {
		if ev.epoch == a.epoch && a.state == Connected {
			a.persisted.LastKnownGood = a.clock.Now().UTC()
			a.persist()
		}
		return
	}
	if ev.epoch != 0 && ev.epoch != a.epoch {
		// A worker of a state we already left: release what it carries.
		if c, ok := ev.payload.(HubConn); ok {
			c.Close()
		}
		return
	}
	// Bookkeeping that next reads.
	switch ev.Kind {
	case EvAssigned:
		as := ev.payload.(*statedir.Assignment)
		a.assignment = as
		if err := a.dir.SaveAssignment(as); err != nil {
			a.log.Error("cannot cache the DPS assignment; continuing with it in memory", "err", err)
		}
		a.persisted.LastProvision = &statedir.ProvisionResult{At: a.clock.Now().UTC(), Result: "assigned", Hub: as.Hub}
	case EvDPSRefused, EvDPSError:
		res := "error"
		if ev.Kind == EvDPSRefused {
			res = "refused"
		}
		a.persisted.LastProvision = &statedir.ProvisionResult{At: a.clock.Now().UTC(), Result: res, Error: errString(ev.Err)}
	}
	a.cnt.cached = a.cacheUsable()
	if a.cnt.hubFailures > 0 && !a.firstHubFailure.IsZero() {
		a.cnt.failingFor = a.clock.Now().Sub(a.firstHubFailure)
	} else {
		a.cnt.failingFor = 0
	}
	ns := next(a.state, ev, a.cnt)
	if ev.Kind == EvHubConnected && ns != Connected {
		ev.payload.(HubConn).Close()
	}
	if ns == a.state {
		if ev.Err != nil {
			a.log.Debug("event ignored in this state", "state", a.state.String(), "event", ev.Kind.String(), "err", ev.Err)
		}
		return
	}
	a.enter(ns, ev, false)
}

// enter is the only place that changes the state and starts its side
// effects. Only Run calls it.
func (a *Agent) enter(ns State, ev Event, boot bool) {
	from := a.state
	if a.stateCancel != nil {
		a.stateCancel()
	}
	if from == Connected && ns != Connected {
		a.closeHub()
	}
	a.epoch++
	a.state = ns
	a.stateCtx, a.stateCancel = context.WithCancel(context.Background())
	epoch, ctx := a.epoch, a.stateCtx
	now := a.clock.Now()

	// Counters and memory.
	switch ev.Kind {
	case EvHubFailed:
		if a.cnt.hubFailures == 0 {
			a.firstHubFailure = now
		}
		a.cnt.hubFailures++
		a.backoffN++
	case EvDPSError, EvClockBad:
		a.backoffN++
	}
	var nextRetry time.Time
	switch ns {
	case Connected:
		a.cnt.hubFailures, a.cnt.reprovisions, a.backoffN, a.revokedN = 0, 0, 0, 0
		a.persisted.RevokedCount, a.persisted.RetryAt = 0, time.Time{}
		a.firstHubFailure = time.Time{}
		a.persisted.LastKnownGood = now.UTC()
		a.persisted.RevokedReason = ""
	case Reprovisioning:
		a.cnt.reprovisions++
		a.cnt.hubFailures = 0
		a.firstHubFailure = time.Time{}
		if a.assignment != nil {
			if err := a.dir.ClearAssignment(); err != nil {
				a.log.Warn("cannot set the cached assignment aside", "err", err)
			}
			a.assignment = nil
			a.cnt.cached = false
		}
	case Revoked:
		if ev.Kind == EvBoot {
			a.revokedN = a.persisted.RevokedCount
		} else {
			a.revokedN++
			a.persisted.RevokedReason = errString(ev.Err)
		}
	}
	if ev.Err != nil {
		a.persisted.LastError = ev.Err.Error()
	}
	if !boot {
		a.log.Info("state change", "state", ns.String(), "from", from.String(), "event", ev.Kind.String(),
			"err", errString(ev.Err), "hub_failures", a.cnt.hubFailures, "reprovisions", a.cnt.reprovisions)
	}
	a.persisted.Name = ns.String()
	a.persisted.Since = now.UTC()
	a.persisted.HubFailures = a.cnt.hubFailures
	if ns != Enrolled {
		a.clockWait = nil
	}

	// Side effects of the new state.
	switch ns {
	case Unenrolled:
		a.watchIdentity(ctx, epoch, EvIdentity)
	case Factory:
		a.runFactory(ctx, epoch)
	case Enrolled:
		var pause time.Duration
		if ev.Kind == EvClockBad {
			// A server said our clock is wrong although it passed the
			// floor: wait (with backoff) for NTP to correct it instead
			// of retrying TLS in a tight loop (docs/field-problems.md, row 6).
			pause = a.retryBackoff().Delay(a.backoffN, rand.Float64())
			nextRetry = now.Add(pause)
		}
		a.startEnrolled(ctx, epoch, pause, ev.Err)
	case Provisioning, Reprovisioning:
		a.startProvisioning(ctx, epoch)
	case Connecting:
		a.startConnecting(ctx, epoch)
	case Connected:
		a.startConnected(ctx, epoch, ev.payload.(HubConn))
	case Backoff:
		d := a.retryBackoff().Delay(a.backoffN, rand.Float64())
		nextRetry = now.Add(d)
		a.timer(ctx, epoch, d, Event{Kind: EvTimer})
	case Revoked:
		min, max := a.cfg.Retry.RevokedMin.D(), a.cfg.Retry.RevokedMax.D()
		d := clock.Backoff{Min: min, Max: max, Jitter: min / 4}.Delay(a.revokedN, rand.Float64())
		if ev.Kind == EvBoot {
			// Resume the wait that a reboot interrupted (capped, in case
			// the clock went backwards).
			d = min64d(a.persisted.RetryAt.Sub(now), max)
		}
		nextRetry = now.Add(d)
		a.persisted.RevokedCount, a.persisted.RetryAt = a.revokedN, nextRetry.UTC()
		a.log.Warn("device is revoked or its enrollment is disabled; retrying slowly", "retry_in", d.String(), "reason", a.persisted.RevokedReason)
		a.timer(ctx, epoch, d, Event{Kind: EvTimer})
	case Error:
		d := a.cfg.Retry.RevokedMin.D()
		nextRetry = now.Add(d)
		a.log.Error("agent needs attention; re-checking later", "err", errString(ev.Err), "retry_in", d.String())
		a.timerFunc(ctx, epoch, d, func() Event {
			_, err := a.probeIdentity()
			return Event{Kind: EvTimer, Identity: err == nil}
		})
	}
	a.persist()
	a.publishStatus(nextRetry)
	if a.opt.Indicator != nil {
		a.opt.Indicator(ns)
	}
	for _, h := range a.transitionHooks {
		h(from, ns, ev)
	}
}

// retryBackoff is the backoff between DPS and hub attempts ([retry]).
func (a *Agent) retryBackoff() clock.Backoff {
	return clock.Backoff{Min: a.cfg.Retry.MinDelay.D(), Max: a.cfg.Retry.MaxDelay.D(), Jitter: a.cfg.Retry.Jitter.D()}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (a *Agent) persist() {
	if err := a.dir.SaveState(&a.persisted); err != nil {
		a.log.Error("cannot save state", "err", err)
	}
}

// timer posts ev for this state entry after d on the agent's clock.
func (a *Agent) timer(ctx context.Context, epoch uint64, d time.Duration, ev Event) {
	a.timerFunc(ctx, epoch, d, func() Event { return ev })
}

func (a *Agent) timerFunc(ctx context.Context, epoch uint64, d time.Duration, mk func() Event) {
	stop := a.clock.AfterFunc(d, func() {
		if ctx.Err() == nil {
			a.postState(epoch, mk())
		}
	})
	context.AfterFunc(ctx, func() { stop() })
}

// sleep waits d on the agent's clock or until ctx ends; it reports
// whether the whole of d passed.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	return clock.Sleep(ctx, a.clock, d) == nil
}

// probeIdentity loads the identity only to see whether it exists (and
// its fingerprint), then releases it.
func (a *Agent) probeIdentity() (string, error) {
	id, err := a.opt.Identity.Load()
	if err != nil {
		return "", err
	}
	defer id.Close()
	return id.Fingerprint, nil
}

// watchIdentity polls for an identity (installed by the jig or by hand)
// and posts kind once it exists.
func (a *Agent) watchIdentity(ctx context.Context, epoch uint64, kind EventKind) {
	go func() {
		for {
			if _, err := a.probeIdentity(); err == nil {
				a.postState(epoch, Event{Kind: kind, Identity: true})
				return
			}
			if !a.sleep(ctx, 5*time.Second) {
				return
			}
		}
	}()
}

func (a *Agent) runFactory(ctx context.Context, epoch uint64) {
	// A device that enters factory mode already programmed (the factory
	// button) stays until the jig installs a different certificate or the
	// bus has been given factoryIdle; an unprogrammed one leaves as soon
	// as it has an identity.
	entryFP, _ := a.probeIdentity()
	programmed := func() bool {
		fp, err := a.probeIdentity()
		return err == nil && fp != entryFP
	}
	if a.opt.Factory == nil {
		if entryFP != "" {
			a.log.Info("factory mode requested, but no factory port is configured; back to the field")
			a.postState(epoch, Event{Kind: EvFactoryDone, Identity: true})
			return
		}
		a.log.Info("factory mode: no factory port configured; waiting for an identity to be installed")
		a.watchIdentity(ctx, epoch, EvFactoryDone)
		return
	}
	a.log.Info("factory mode: serving the factory bus", "port", a.cfg.Factory.Port, "programmed", entryFP != "")
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.opt.Factory(fctx) }()
	finish := func(err error) {
		_, idErr := a.probeIdentity()
		a.postState(epoch, Event{Kind: EvFactoryDone, Identity: idErr == nil, Err: err})
	}
	go func() {
		defer cancel()
		deadline := a.clock.Now().Add(factoryIdle)
		for {
			if programmed() {
				// Keep answering the jig (STATUS, a repeated INSTALL) for a
				// grace period, then go to the field.
				if !a.sleep(ctx, factoryLinger) {
					return
				}
				cancel()
				<-done
				finish(nil)
				return
			}
			if entryFP != "" && !a.clock.Now().Before(deadline) {
				a.log.Info("factory mode timed out; back to the field", "after", factoryIdle.String())
				cancel()
				<-done
				finish(nil)
				return
			}
			tick, stop := clock.After(a.clock, time.Second)
			select {
			case err := <-done:
				stop()
				finish(err)
				return
			case <-ctx.Done():
				stop()
				return
			case <-tick:
			}
		}
	}()
}

// cacheUsable says whether the cached assignment belongs to this config
// and this certificate.
func (a *Agent) cacheUsable() bool {
	as := a.assignment
	if as == nil || as.Hub == "" || as.DeviceID == "" {
		return false
	}
	if as.IDScope != a.cfg.DPS.IDScope || as.Endpoint != a.cfg.DPS.Endpoint {
		return false
	}
	if a.id != nil && as.CertFingerprint != "" && as.CertFingerprint != a.id.Fingerprint {
		return false
	}
	return true
}

// clockFloor is the earliest plausible time: the certificate's
// notBefore, the last time a verified TLS session was seen, and the
// build-time floor.
func (a *Agent) clockFloor() (time.Time, string) {
	floor, why := clockFloorBuild, "build date"
	if a.id != nil && len(a.id.Chain) > 0 && a.id.Chain[0].NotBefore.After(floor) {
		floor, why = a.id.Chain[0].NotBefore, "certificate notBefore"
	}
	if a.persisted.LastKnownGood.After(floor) {
		floor, why = a.persisted.LastKnownGood, "last known good time"
	}
	return floor, why
}

// clockFloorBuild is a date before which this build cannot be running.
var clockFloorBuild = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// startEnrolled loads the identity and waits for a sane clock; pause
// (after a TLS time error, cause) delays the first check.
func (a *Agent) startEnrolled(ctx context.Context, epoch uint64, pause time.Duration, cause error) {
	id, err := a.opt.Identity.Load()
	if err == nil && a.id != nil && a.id != id {
		// The previous identity's connection is closed by now.
		a.id.Close()
	}
	if err != nil {
		if errors.Is(err, ErrNoIdentity) {
			a.postState(epoch, Event{Kind: EvFatal, Err: fmt.Errorf("identity disappeared: %w", err)})
		} else {
			a.postState(epoch, Event{Kind: EvFatal, Err: err})
		}
		return
	}
	a.id = id
	a.mu.Lock()
	a.status.KeyBackend = id.Backend
	if len(id.Chain) > 0 {
		a.status.CertExpiry = id.Chain[0].NotAfter
		a.status.CertSerial = fmt.Sprintf("%x", id.Chain[0].SerialNumber)
	}
	a.mu.Unlock()
	if a.cfg.DPS.IDScope == "" && !a.cacheUsable() {
		a.postState(epoch, Event{Kind: EvFatal, Err: errors.New("dps.id_scope is not set in the config and no DPS assignment is cached")})
		return
	}
	floor, why := a.clockFloor()
	cached := a.cacheUsable()
	go func() {
		start := a.clock.Now()
		if pause > 0 {
			a.setClockWait(&ClockWait{Since: start.UTC(), Floor: floor,
				Reason: "a server rejected our clock (" + errString(cause) + "); waiting for it to be corrected"})
			if !a.sleep(ctx, pause) {
				return
			}
		}
		// Re-check every 1 s, doubling to 32 s.
		checks := clock.Backoff{Min: time.Second, Max: 32 * time.Second}
		for n := 1; ; n++ {
			now := a.clock.Now()
			synced := !a.cfg.Clock.RequireSync || a.opt.ClockSynced == nil || a.opt.ClockSynced()
			if !now.Before(floor) && synced {
				a.postState(epoch, Event{Kind: EvClockOK, Cached: cached})
				return
			}
			reason := fmt.Sprintf("clock %s is before the %s %s", now.UTC().Format(time.RFC3339), why, floor.Format(time.RFC3339))
			if !synced && !now.Before(floor) {
				reason = "waiting for the kernel to report NTP synchronisation"
			}
			exceeded := now.Sub(start) >= a.cfg.Clock.MaxWait.D() || now.Before(start)
			a.setClockWait(&ClockWait{Since: start.UTC(), Floor: floor, Reason: reason, Exceeded: exceeded})
			if exceeded && !now.Before(floor.Add(-24*time.Hour)) {
				// Bounded wait: within a day of the floor, try anyway;
				// TLS time errors are then treated as clock problems.
				a.log.Warn("clock wait exceeded; proceeding", "reason", reason)
				a.postState(epoch, Event{Kind: EvClockOK, Cached: cached})
				return
			}
			if n == 1 {
				a.log.Warn("waiting for a sane clock before any TLS", "reason", reason, "max_wait", a.cfg.Clock.MaxWait.String())
			}
			if !a.sleep(ctx, checks.Delay(n, 0)) {
				return
			}
		}
	}()
}

func (a *Agent) setClockWait(cw *ClockWait) {
	a.mu.Lock()
	a.status.ClockWait = cw
	a.mu.Unlock()
}

func (a *Agent) startProvisioning(ctx context.Context, epoch uint64) {
	if a.id == nil {
		// Booted straight into a resumed revoked wait: load it now.
		id, err := a.opt.Identity.Load()
		if err != nil {
			a.postState(epoch, Event{Kind: EvFatal, Err: err})
			return
		}
		a.id = id
	}
	id := a.id
	go func() {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.DPS.Timeout.D())
		defer cancel()
		as, err := a.opt.Cloud.Register(rctx, id)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			switch a.opt.Cloud.Classify(err) {
			case ClassRefused, ClassAuth:
				// Disabled, failed, or the credential refused (401, e.g. a
				// revoked certificate): retrying at network pace would
				// hammer DPS with a credential it has already refused.
				a.postState(epoch, Event{Kind: EvDPSRefused, Err: err})
			case ClassClock:
				a.postState(epoch, Event{Kind: EvClockBad, Err: err})
			case ClassFatal:
				a.postState(epoch, Event{Kind: EvFatal, Err: err})
			default:
				a.postState(epoch, Event{Kind: EvDPSError, Err: err})
			}
			return
		}
		as.IDScope, as.Endpoint = a.cfg.DPS.IDScope, a.cfg.DPS.Endpoint
		if as.CertFingerprint == "" {
			as.CertFingerprint = id.Fingerprint
		}
		if as.AssignedAt.IsZero() {
			as.AssignedAt = a.clock.Now().UTC()
		}
		a.log.Info("DPS assigned a hub", "hub", as.Hub, "device_id", as.DeviceID, "substatus", as.Substatus)
		a.postState(epoch, Event{Kind: EvAssigned, payload: as})
	}()
}

func (a *Agent) startConnecting(ctx context.Context, epoch uint64) {
	// Reload the credential on every connect: a renewal may have
	// committed a new one meanwhile (also while provisioning). Nothing
	// uses the previous one any more: its connection is closed.
	if id, err := a.opt.Identity.Load(); err == nil {
		if a.id != id {
			a.id.Close()
		}
		a.id = id
	} else {
		a.log.Warn("reloading the identity before connecting; using the loaded one", "err", err)
	}
	id, as := a.id, a.assignment
	if id != nil && id.Operational != nil {
		// The hub gets the operational credential (DPS-issued or
		// renewed); DPS keeps the factory onboarding credential.
		id = id.Operational
	}
	h := Handlers{C2D: a.onC2D, Method: a.onMethod, Desired: a.onDesired, MethodNames: a.methodNames()}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, a.cfg.Hub.ConnectTimeout.D())
		defer cancel()
		conn, err := a.opt.Cloud.Connect(cctx, id, as, h)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			switch a.opt.Cloud.Classify(err) {
			case ClassAuth:
				a.postState(epoch, Event{Kind: EvHubFailed, AuthRefused: true, Err: err})
			case ClassClock:
				a.postState(epoch, Event{Kind: EvClockBad, Err: err})
			default:
				a.postState(epoch, Event{Kind: EvHubFailed, Err: err})
			}
			return
		}
		a.postState(epoch, Event{Kind: EvHubConnected, payload: conn})
	}()
}

func (a *Agent) startConnected(ctx context.Context, epoch uint64, conn HubConn) {
	a.mu.Lock()
	a.hub = conn
	a.mu.Unlock()
	a.log.Info("connected", "hub", a.hubName(), "device_id", a.assignment.DeviceID)
	go func() {
		select {
		case <-conn.Done():
			err := conn.Err()
			if err == nil {
				err = errors.New("connection closed")
			}
			a.postState(epoch, Event{Kind: EvHubFailed, Err: fmt.Errorf("hub connection lost: %w", err)})
		case <-ctx.Done():
		}
	}()
	go a.sendLoop(ctx, conn)
	go a.healthLoop(ctx, conn)
	// Keep the clock floor fresh on a device that stays connected for
	// months: the next boot then refuses a clock that went far back.
	go func() {
		for a.sleep(ctx, lkgInterval) {
			a.postState(epoch, Event{Kind: evLKG})
		}
	}()
}

// lkgInterval is how often a connected agent refreshes last_known_good.
const lkgInterval = time.Hour

// Enqueue adds a telemetry message to the durable queue. It returns the
// queue sequence number once the message is stored per the fsync policy.
func (a *Agent) Enqueue(m Message) (uint64, error) {
	if len(m.Body) > a.cfg.LocalAPI.MaxMessage {
		return 0, fmt.Errorf("message body is %d bytes; the limit is %d", len(m.Body), a.cfg.LocalAPI.MaxMessage)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	return a.queue.Append(b)
}

// Alive reports whether the state goroutine processes events (for the
// systemd watchdog).
func (a *Agent) Alive(ctx context.Context) bool {
	ch := make(chan struct{})
	select {
	case a.events <- Event{Kind: evPing, payload: ch}:
	case <-ctx.Done():
		return false
	case <-a.stopped:
		return false
	}
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// CredentialChanged tells the agent the credential on disk changed (a
// committed renewal): it reloads the identity and reconnects.
func (a *Agent) CredentialChanged() { a.post(Event{Kind: EvCredential}) }

// RequestReprovision asks the agent to go back to DPS.
func (a *Agent) RequestReprovision() { a.post(Event{Kind: EvReprovision}) }

// Report patches reported properties on the live connection.
func (a *Agent) Report(ctx context.Context, patch []byte) error {
	a.mu.Lock()
	hub := a.hub
	a.mu.Unlock()
	if hub == nil {
		return errors.New("not connected to the hub")
	}
	return hub.Report(ctx, patch)
}

// QueueStats returns the telemetry queue counters.
func (a *Agent) QueueStats() queue.Stats { return a.queue.Stats() }

// Status returns a snapshot of the agent's status.
func (a *Agent) Status() Status {
	qs := a.queue.Stats()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Queue = QueueInfoFrom(qs)
	s.Sent = a.sent
	now := a.clock.Now()
	s.Uptime = now.Sub(s.StartedAt).Truncate(time.Second).String()
	if len(a.statusExtra) > 0 {
		s.Extra = map[string]any{}
		for k, f := range a.statusExtra {
			s.Extra[k] = f()
		}
	}
	return s
}

// deviceID is the one source of Status.DeviceID: the ID the hub knows
// once DPS assigned one, else the identity's (its certificate CN). Like
// publishStatus, it runs on the state machine's goroutine.
func (a *Agent) deviceID() string {
	if a.assignment != nil && a.assignment.DeviceID != "" {
		return a.assignment.DeviceID
	}
	if a.id != nil {
		return a.id.DeviceID
	}
	return ""
}

func (a *Agent) publishStatus(nextRetry time.Time) {
	a.mu.Lock()
	a.status.State = a.state.String()
	a.status.Since = a.persisted.Since
	a.status.Hub = a.hubName()
	a.status.DeviceID = a.deviceID()
	a.status.HubFailures = a.cnt.hubFailures
	a.status.LastError = a.persisted.LastError
	a.status.LastProvision = a.persisted.LastProvision
	a.status.NextRetry = nextRetry
	a.status.Version = a.opt.Version
	a.status.StartedAt = a.started
	if a.state != Enrolled {
		a.status.ClockWait = nil
	}
	a.mu.Unlock()
	if a.opt.OnState != nil {
		a.opt.OnState(a.Status())
	}
}

// factoryLinger is how long factory mode keeps answering the jig (STATUS,
// a repeated INSTALL) after a certificate was installed.
const factoryLinger = 3 * time.Second

// factoryIdle bounds factory mode entered with the button on a device
// that is already programmed.
const factoryIdle = 10 * time.Minute

func min64d(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
