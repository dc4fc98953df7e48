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
	"devid/agent/renewal"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/credential"
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
	// id is the factory (onboarding) credential, which DPS sees; op,
	// when set, is the operational credential the hub gets instead
	// (renewal paths dps and hub).
	id        *credential.Credential
	bootID    *credential.Credential // loaded at boot, for the first loadIdentity
	op        *credential.Credential
	clockWait *ClockWait
	// anchors bound last_known_good by real time (clockfloor.go).
	anchors floorAnchors
	started time.Time
	// firstHubFailure is when the current run of hub failures began.
	firstHubFailure time.Time

	mu     sync.Mutex // guards status, hub, local
	status Status
	hub    HubConn
	sent   uint64
	local  LocalSink

	// renewal renews the credential (agent/renewal); the agent runs it,
	// routes its direct method and desired property to it and shows its
	// status.
	renewal *renewal.Renewal
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
	if err := refuseNewerRecords(dir, opt.Logger.With("component", "agent")); err != nil {
		return nil, err
	}
	q, err := queue.Open(dir.File(statedir.QueueDir), queue.Options{
		MaxBytes:      cfg.Queue.MaxBytes,
		SegmentBytes:  cfg.Queue.SegmentBytes,
		Fsync:         cfg.Queue.Fsync,
		FsyncInterval: cfg.Queue.FsyncInterval.D(),
		CursorEvery:   sendWindow / 2,
		MemoryBytes:   memoryQueueBytes(cfg.Queue.MaxBytes),
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
	}
	a.status.Config = opt.ConfigDegraded
	a.renewal, err = renewal.New(renewal.Deps{
		Config: cfg, Dir: dir, Identity: opt.Identity,
		// The cloud's own Register and Connect: the probe's refusals
		// are not the live session's.
		Register: opt.Cloud.Register,
		Connect: func(ctx context.Context, c *credential.Credential, as *statedir.Assignment) error {
			conn, err := opt.Cloud.Connect(ctx, c, as, Handlers{})
			if err != nil {
				return err
			}
			conn.Close()
			return nil
		},
		// Only a refusal condemns a new credential; a hub that is down
		// does not (agent/renewal/renewal.go, probe).
		Refused: func(err error) bool {
			c := opt.Cloud.Classify(err)
			return c == ClassAuth || c == ClassFatal
		},
		Network: cloudNetwork(opt.Cloud), Clock: opt.Clock, Logger: a.log,
	})
	if err != nil {
		q.Close()
		return nil, err
	}
	return a, nil
}

// cloudNetwork is how the cloud reaches DPS and the hub, for the renewal
// issuers (the zero value for a cloud that does not say).
func cloudNetwork(c Cloud) dps.Network {
	if n, ok := c.(interface{ Network() dps.Network }); ok {
		return n.Network()
	}
	return dps.Network{}
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
	} else if !errors.Is(err, statedir.ErrNotExist) || errors.As(err, new(*statedir.CorruptError)) {
		a.logUnreadable("state record unreadable; starting fresh (nothing deleted)", err)
	}
	if as, err := a.dir.LoadAssignment(); err == nil {
		a.assignment = as
	} else if !errors.Is(err, statedir.ErrNotExist) || errors.As(err, new(*statedir.CorruptError)) {
		a.logUnreadable("cached assignment unreadable; will register with DPS", err)
	}
	// The saved floor was derived from real time (clockfloor.go); it is
	// dropped if real time contradicts it.
	a.anchors.saved.raise(a.clock, a.persisted.LastKnownGood)
	a.log.Info("starting", "version", a.opt.Version, "state_dir", a.cfg.StateDir,
		"previous_state", a.persisted.Name, "cached_hub", a.hubName())

	go a.renewal.Run(ctx)
	// The probe's credential is the one entering Enrolled loads next: it
	// is handed over rather than loaded into the TPM a second time (under
	// emulation each load is a few tenths of a second of boot;
	// docs/benchmarks.md).
	bootID, idErr := a.opt.Identity.Load()
	a.bootID = bootID
	revoked := a.persisted.Name == Revoked.String() && a.persisted.RetryAt.After(a.clock.Now())
	a.state = Unenrolled
	a.enter(Unenrolled, Event{Kind: EvBoot}, true)
	a.handle(Event{Kind: EvBoot, Identity: idErr == nil, Revoked: revoked,
		FactoryPort: (a.cfg.Factory.Port != "" || a.cfg.Factory.USBGadget) && a.opt.Factory != nil})
	if a.bootID != nil { // not taken: the boot went elsewhere than Enrolled
		a.bootID.Close()
		a.bootID = nil
	}

	for {
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-a.opt.Button:
			a.handle(Event{Kind: EvFactoryButton})
		case <-a.renewal.Rotated():
			// Reload the identity and reconnect with the new credential.
			a.handle(Event{Kind: EvCredential})
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
	a.op.Close()
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
			a.confirmLastKnownGood(false)
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
	case EvClockOK:
		if ev.WrongFloor {
			a.correctSavedFloor()
		}
	case EvAssigned:
		as := ev.payload.(*statedir.Assignment)
		a.assignment = as
		written, err := a.dir.WriteAssignment(as)
		if err != nil {
			a.log.Error("cannot cache the DPS assignment; continuing with it in memory", "err", err)
		}
		a.stateDirWritten(written, err)
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
		a.confirmLastKnownGood(true)
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
	if ns == Connected {
		a.renewal.Connected(a.op)
	}
	if ns == Connected && a.id != nil && a.renewal.Stale(a.op) {
		// Connected with anything but the installed operational
		// credential (a rotation committed while the agent could not take
		// it, say mid-provisioning at boot): reload, once per certificate.
		go a.CredentialChanged()
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
	written, err := a.dir.WriteState(&a.persisted)
	a.stateDirWritten(written, err)
}

// stateDirWritten records the outcome of a state write: the first
// failure is logged and shown in status (the agent runs on with its
// state in memory), and so is the recovery. Only a write that happened
// (written) shows recovery: a save skipped because the file already held
// those bytes succeeds on a read-only disk too, so it leaves the error as
// it was.
func (a *Agent) stateDirWritten(written bool, err error) {
	if err == nil && !written {
		return
	}
	a.mu.Lock()
	was := a.status.StateDirError
	a.status.StateDirError = ""
	if err != nil {
		a.status.StateDirError = err.Error()
	}
	a.mu.Unlock()
	switch {
	case err != nil && was == "":
		a.log.Error("cannot write the state directory; running on with the state in memory (a restart loses what changed)", "err", err)
	case err == nil && was != "":
		a.log.Info("the state directory takes writes again")
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

// Enqueue adds a telemetry message to the durable queue. It returns the
// queue sequence number once the message is stored per the fsync policy.
// A message without a MessageID gets a random one here, stored with it,
// so every resend carries the same $.mid and the cloud can drop the
// duplicates that at-least-once delivery makes.
func (a *Agent) Enqueue(m Message) (uint64, error) {
	if len(m.Body) > a.cfg.LocalAPI.MaxMessage {
		return 0, fmt.Errorf("message body is %d bytes; the limit is %d", len(m.Body), a.cfg.LocalAPI.MaxMessage)
	}
	if m.MessageID == "" {
		m.MessageID = newMessageID()
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

func min64d(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
